"""CLIP score (torchmetrics' formula) and the objective proxies on synthetic sequences."""

from __future__ import annotations

import random

import pytest
import torch

from pm_lightning.data.synthetic_corpus import TRAIN_DOMAINS, generate_sequence
from pm_lightning.eval.scores import (
    clip_score,
    coherence_proxy,
    ground_truth_similarity,
    pairwise_distance,
    pixel_features,
    progress_index,
    progress_monotonicity,
    sequence_proxies,
    step_evenness,
)


def test_clip_score_matches_torchmetrics_formula_and_clips_at_zero():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    got = clip_score(img, txt)
    # torchmetrics CLIPScore: normalise both, 100 * (a * b).sum(-1), then max(score, 0) - by hand here
    ref = [100 * max(float(a @ b / (a.norm() * b.norm())), 0.0) for a, b in zip(img, txt)]
    assert got.shape == (64,)
    assert torch.allclose(got, torch.tensor(ref), atol=1e-4)
    assert (got == 0).any() and (got > 0).any()  # random pairs: some negative cosines, clipped
    assert clip_score(img[:1], -img[:1]).item() == 0.0
    assert clip_score(img[:1], 3 * img[:1]).item() == pytest.approx(100.0, abs=1e-4)


def test_pairwise_distance_metrics():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(pairwise_distance(a, torch.tensor([1.0, 0.0])), torch.tensor([0.0, 1.0]))
    assert torch.allclose(pairwise_distance(a, torch.zeros(2), "l2"), torch.tensor([1.0, 2.0]) / 2**0.5)
    with pytest.raises(ValueError, match="unknown metric"):
        pairwise_distance(a, a, "manhattan")


@pytest.mark.parametrize("domain", TRAIN_DOMAINS)
def test_ground_truth_sequence_is_monotone_and_shuffled_is_not(domain):
    seq = generate_sequence(domain, seed=7)
    pix = pixel_features(seq.frames)
    assert progress_monotonicity(pix, metric="l2") == 1.0  # every synthetic step adds to the picture
    rng = random.Random(0)
    shuffled = []
    for _ in range(20):
        order = list(range(len(seq.frames)))
        rng.shuffle(order)
        shuffled.append(progress_monotonicity(pix[order], target=pix[-1], metric="l2"))
    assert sum(shuffled) / len(shuffled) < 0.8


def test_monotonicity_counts_transitions_towards_the_target():
    x = torch.tensor([[0.0], [3.0], [1.0], [2.0], [4.0]])  # distances to 4: 4, 1, 3, 2, 0
    assert progress_monotonicity(x, metric="l2") == pytest.approx(3 / 4)
    assert progress_monotonicity(x, target=torch.tensor([0.0]), metric="l2") == pytest.approx(1 / 4)
    assert progress_monotonicity(x[:1], metric="l2") != progress_monotonicity(x[:1], metric="l2")  # nan


def test_even_steps_beat_a_duplicate_frame():
    even = torch.arange(9.0)[:, None]
    assert step_evenness(even, "l2") == pytest.approx(1.0)
    dup = torch.tensor([0.0, 1, 2, 3, 3, 4, 5, 6, 7])[:, None]
    s = torch.tensor([1.0, 1, 1, 0, 1, 1, 1, 1])  # 1 - std/mean by hand
    assert step_evenness(dup, "l2") == pytest.approx((1 - s.std(unbiased=False) / s.mean()).item(), abs=1e-6)
    assert step_evenness(dup, "l2") < step_evenness(even, "l2")
    assert step_evenness(torch.zeros(4, 3), "l2") == 0.0
    assert step_evenness(torch.tensor([[0.0], [0.0], [0.0], [5.0]]), "l2") == 0.0  # CV = 1.41 > 1 clips at 0


def test_synthetic_sequence_evenness_drops_with_a_duplicate_frame():
    seq = generate_sequence("lego", seed=3)
    pix = pixel_features(seq.frames)
    with_dup = torch.cat([pix[:4], pix[3:4], pix[4:]])
    assert step_evenness(with_dup, "l2") < step_evenness(pix, "l2")


def test_coherence_proxy_is_monotonicity_times_evenness():
    """Coh proxy on a hand-computed sequence: distances to the last frame 4, 1, 3, 2, 0 give monotonicity 3/4; steps
    3, 2, 1, 2 (mean 2, population sd sqrt(0.5)) give evenness 1 - sqrt(0.5) / 2; the proxy is their product."""
    x = torch.tensor([[0.0], [3.0], [1.0], [2.0], [4.0]])
    mono, even = progress_monotonicity(x, metric="l2"), step_evenness(x, "l2")
    assert mono == pytest.approx(0.75) and even == pytest.approx(1 - 0.5**0.5 / 2)
    assert coherence_proxy(mono, even) == pytest.approx(0.75 * (1 - 0.5**0.5 / 2))
    assert coherence_proxy(1.0, 1.0) == 1.0 and coherence_proxy(1.0, 0.0) == 0.0 and coherence_proxy(0.0, 0.7) == 0.0
    nan = progress_monotonicity(x[:1], metric="l2")  # undefined for one frame: so is the proxy
    assert coherence_proxy(nan, 1.0) != coherence_proxy(nan, 1.0)
    seq = generate_sequence("lego", seed=3)  # a true sequence against the same one with a frame shown twice
    pix = pixel_features(seq.frames)
    dup = torch.cat([pix[:4], pix[3:4], pix[4:]])

    def coh(p):
        return coherence_proxy(progress_monotonicity(p, metric="l2"), step_evenness(p, "l2"))

    assert coh(dup) < coh(pix)


def test_progress_index_pairs_frames_by_the_fraction_of_the_way_through():
    assert progress_index(9, 10).tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9]  # k * 9 / 8; 4.5 rounds half to even
    assert progress_index(9, 8).tolist() == [0, 1, 2, 3, 4, 4, 5, 6, 7]  # k * 7 / 8: 3.5 -> 4, 4.375 -> 4
    assert progress_index(9, 9).tolist() == list(range(9)) and progress_index(1, 5).tolist() == [0]


def test_ground_truth_similarity_and_proxies_dict():
    x = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    assert ground_truth_similarity(x, x) == pytest.approx(1.0)
    truth = x[[0, 0, 2, 2, 4, 4, 4, 4, 4]]  # 9 true frames, 5 generated: frame k meets true frame round(2k)
    assert ground_truth_similarity(x[[0, 1, 2, 3, 4]], truth) < 1.0
    out = sequence_proxies(x, truth)
    assert set(out) == {"monotonicity", "evenness", "gt_similarity"}
    assert set(sequence_proxies(x)) == {"monotonicity", "evenness"}


def test_each_metric_is_read_from_its_one_definition():
    """A metric of eval/metric_registry.py reaches the sample table's columns and the ablations' columns (mean, per
    domain, held out) with its header, format and direction, with no second list to edit."""
    from pm_lightning.ablation.columns import FROM_SAMPLE_TABLE, column
    from pm_lightning.eval.metric_registry import METRICS
    from pm_lightning.eval.sample_table import markdown_table

    for m in METRICS:
        assert FROM_SAMPLE_TABLE[m.key] == m.ablation_key
        for key in (m.ablation_key, f"unseen_{m.ablation_key}", f"{m.ablation_key}/lego"):
            assert (column(key).fmt, column(key).better) == (m.fmt, m.better)
        table = markdown_table({"lego": {"n": 1, m.key: 0.5}}, {"n": 1, m.key: 0.5}, [m.key])
        assert table.splitlines()[0] == f"| Domain | n | {m.header} |" and f"| {format(0.5, m.fmt)} |" in table
