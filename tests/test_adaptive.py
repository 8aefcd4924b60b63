"""Adaptive steps: Delta terms, thresholds and guards on hand-made values, decisions, bounds, the rounds loop
(stub scorer), and insertion / deletion on synthetic ground truth with the tiny evaluators."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pm_lightning.core.paths import tiny_eval_dir
from pm_lightning.eval.guard_sweep import best_split
from pm_lightning.inference.adaptive import adapt_sequence
from pm_lightning.inference.adaptive_rule import (
    AdaptiveConfig,
    Thresholds,
    combine,
    decide,
    effective_weights,
    frame_to_drop,
    global_delta,
    local_delta,
    patch_chamfer,
    semantic_delta,
    thresholds,
)
from pm_lightning.inference.adaptive_settings import add_config_flags, config_from_args

HAVE_TINY_EVAL = (tiny_eval_dir() / "clip" / "open_clip_config.json").is_file()
needs_tiny_eval = pytest.mark.skipif(
    not HAVE_TINY_EVAL, reason=f"tiny evaluators missing ({tiny_eval_dir()}; `make tiny-eval`)"
)


# ---------------------------------------------------------------- Delta terms


def test_global_and_semantic_delta_are_one_minus_cosine_of_neighbours():
    v = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    expected = torch.tensor([1 - math.cos(math.pi / 4), 1 - math.cos(math.pi / 4), 1.0])
    assert torch.allclose(global_delta(v), expected, atol=1e-6)
    assert torch.allclose(semantic_delta(v), expected, atol=1e-6)


def test_local_delta_is_a_patch_chamfer_distance_not_a_global_vector():
    e1, e2, e3 = torch.eye(3)
    p, q = torch.stack([e1, e2]), torch.stack([e1, e1])
    assert patch_chamfer(p, q).item() == pytest.approx((0 + math.sqrt(2)) / 2, abs=1e-6)  # mean over p of min over q
    assert patch_chamfer(q, p).item() == pytest.approx(0.0, abs=1e-6)  # directed: every patch of q has a match in p
    shuffled = torch.stack([e2, e1])
    assert patch_chamfer(p, shuffled).item() == pytest.approx(0.0, abs=1e-6)  # patch positions do not matter
    # same mean token, different patches: a global (mean-pooled) vector could not tell them apart
    a, b = torch.stack([e1, e2]), F.normalize(torch.stack([e1 + e2, e1 + e2]), dim=-1)
    assert F.normalize(a.mean(0), dim=0).allclose(b[0]) and patch_chamfer(a, b) > 0.7
    tokens = torch.stack([p, q, torch.stack([e3, e3])])
    assert torch.allclose(local_delta(tokens), torch.stack([patch_chamfer(p, q), patch_chamfer(q, tokens[2])]))


def test_weights_renormalise_when_the_semantic_term_is_dropped():
    cfg = AdaptiveConfig()
    assert effective_weights(cfg, True) == {"glob": 0.6, "loc": 0.2, "sem": 0.2}
    w = effective_weights(cfg, False)
    assert w["sem"] == 0 and w["glob"] == pytest.approx(0.75) and w["loc"] == pytest.approx(0.25)
    terms = {"glob": torch.tensor([0.2, 0.4]), "loc": torch.tensor([0.4, 0.8]), "sem": None}
    assert torch.allclose(combine(terms, w), torch.tensor([0.75 * 0.2 + 0.25 * 0.4, 0.75 * 0.4 + 0.25 * 0.8]))
    full = combine({**terms, "sem": torch.tensor([1.0, 0.0])}, effective_weights(cfg, True))
    assert torch.allclose(full, torch.tensor([0.6 * 0.2 + 0.2 * 0.4 + 0.2, 0.6 * 0.4 + 0.2 * 0.8]))
    with pytest.raises(ValueError, match="missing"):
        combine(terms, effective_weights(cfg, True))


# ---------------------------------------------------------------- thresholds and guards


def test_thresholds_on_hand_made_deltas():
    delta = torch.tensor([0.1, 0.1, 0.1, 0.5])
    mu, sigma = 0.2, math.sqrt((3 * 0.01 + 0.09) / 4)  # population std
    t = thresholds(delta, AdaptiveConfig(add_floor=0.25, del_ceiling=0.05))
    assert t.mu == pytest.approx(mu) and t.sigma == pytest.approx(sigma)
    assert t.tau_add == pytest.approx(mu + 0.8 * sigma) and t.tau_del == pytest.approx(mu - 1.0 * sigma)
    assert t.add == pytest.approx(mu + 0.8 * sigma)  # above the floor: the relative threshold rules
    assert t.delete == pytest.approx(mu - sigma)  # min(0.0268, 0.05): the relative threshold rules
    t2 = thresholds(delta, AdaptiveConfig(add_floor=0.6, del_ceiling=0.01, k1=2.0, k2=0.5))
    assert t2.tau_add == pytest.approx(mu + 2 * sigma) and t2.add == pytest.approx(0.6)  # the floor rules
    assert t2.tau_del == pytest.approx(mu - 0.5 * sigma) and t2.delete == pytest.approx(0.01)  # the ceiling rules
    one = thresholds(torch.tensor([0.3]), AdaptiveConfig())
    assert one.sigma == 0 and one.tau_add == one.tau_del == pytest.approx(0.3)


def test_relative_thresholds_fire_on_any_spread_but_the_guards_stop_them():
    delta = torch.tensor([0.10, 0.11, 0.08, 0.12, 0.10, 0.11, 0.10, 0.13])  # an even sequence, a little spread
    t = thresholds(delta, AdaptiveConfig(add_floor=1e-9, del_ceiling=0.0))
    raw = Thresholds(t.mu, t.sigma, t.tau_add, t.tau_del, t.tau_add, t.tau_del)
    assert any(d.action == "insert" for d in decide(delta, raw, AdaptiveConfig()))  # relative alone: an insertion
    assert any(d.action == "delete" for d in decide(delta, raw, AdaptiveConfig()))  # ... and a deletion
    guarded = thresholds(delta, AdaptiveConfig())
    assert decide(delta, guarded, AdaptiveConfig()) == []


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="k1"):
        AdaptiveConfig(k1=-1)
    with pytest.raises(ValueError, match="del_ceiling"):
        AdaptiveConfig(add_floor=0.1, del_ceiling=0.2)
    with pytest.raises(ValueError, match="min_frames"):
        AdaptiveConfig(min_frames=10, max_frames=5)
    with pytest.raises(ValueError, match="two_frame_ratio"):
        AdaptiveConfig(two_frame_ratio=0.5)
    with pytest.raises(ValueError, match="w_glob"):
        AdaptiveConfig(w_glob=0, w_loc=0)
    with pytest.raises(ValueError, match="unknown AdaptiveConfig keys"):
        AdaptiveConfig.from_dict({"k3": 1})


def test_flags_and_config_file_build_the_config(tmp_path):
    p = argparse.ArgumentParser()
    add_config_flags(p)
    (tmp_path / "a.yaml").write_text("k1: 1.5\nmax_frames: 12\n")
    cfg = config_from_args(
        p.parse_args(["--adaptive-config", str(tmp_path / "a.yaml"), "--max-frames", "14", "--add-floor", "0.4"])
    )
    assert (cfg.k1, cfg.max_frames, cfg.add_floor, cfg.w_glob) == (1.5, 14, 0.4, 0.6)
    assert config_from_args(p.parse_args([])) == AdaptiveConfig()


# ---------------------------------------------------------------- decisions


def _thr(add: float, delete: float) -> Thresholds:
    return Thresholds(0.0, 0.0, add, delete, add, delete)


def test_one_or_two_insertions_by_how_far_above_the_threshold():
    cfg = AdaptiveConfig(two_frame_ratio=1.5)
    ds = decide(torch.tensor([0.1, 0.35, 0.1, 0.1, 0.5, 0.1]), _thr(0.3, 0.0), cfg)
    assert [(d.action, d.pair, d.n) for d in ds] == [("insert", 4, 2), ("insert", 1, 1)]  # 0.5 >= 1.5*0.3 > 0.35


def test_never_deletes_the_first_or_last_frame():
    assert frame_to_drop(0, [0.0, 0.5, 0.3], 4) == 1
    assert frame_to_drop(2, [0.3, 0.5, 0.0], 4) == 2
    assert frame_to_drop(0, [0.0], 2) == -1
    ds = decide(torch.tensor([0.0]), _thr(0.3, 0.05), AdaptiveConfig())
    assert len(ds) == 1 and not ds[0].applied and "first and last" in ds[0].reason
    for delta in ([0.0, 0.2, 0.2, 0.2], [0.2, 0.2, 0.2, 0.0], [0.0, 0.2, 0.0]):
        ds = decide(torch.tensor(delta), _thr(0.3, 0.05), AdaptiveConfig())
        n = len(delta) + 1
        assert ds and all(0 < d.frame < n - 1 for d in ds if d.applied)


def test_deletion_drops_the_frame_whose_removal_merges_the_smaller_step():
    # pair (2, 3) is redundant; dropping 2 merges Delta(1,2)=0.1, dropping 3 merges Delta(3,4)=0.3 -> drop 2
    assert frame_to_drop(2, [0.2, 0.1, 0.0, 0.3, 0.2], 6) == 2
    assert frame_to_drop(2, [0.2, 0.3, 0.0, 0.1, 0.2], 6) == 3


def test_bounds_are_respected():
    delta = torch.tensor([0.5, 0.1, 0.5, 0.1, 0.5])  # 6 frames
    ds = decide(delta, _thr(0.3, 0.0), AdaptiveConfig(max_frames=8, two_frame_ratio=1.5))
    applied = [d for d in ds if d.applied]
    assert sum(d.n for d in applied) == 2 and any("max_frames" in d.reason for d in ds)
    ds = decide(torch.tensor([0.0, 0.2, 0.0, 0.2, 0.0]), _thr(0.3, 0.05), AdaptiveConfig(min_frames=5))
    assert sum(d.applied for d in ds) == 1 and any("min_frames" in d.reason for d in ds)


def test_neighbouring_edits_wait_for_the_next_round():
    ds = decide(torch.tensor([0.2, 0.0, 0.0, 0.2]), _thr(0.3, 0.05), AdaptiveConfig())  # frames 1, 2, 3 alike
    assert [d.applied for d in ds] == [True, False]


def test_best_split_separates_two_sets():
    cut, err = best_split([0.1, 0.2, 0.3], [0.5, 0.6])
    assert cut == pytest.approx(0.4) and err == 0
    cut, err = best_split([0.1, 0.2, 0.55], [0.5, 0.6, 0.7])
    assert 0.2 < cut < 0.6 and err == pytest.approx(1 / 6)


# ---------------------------------------------------------------- the rounds loop (stub scorer, no models)


class AngleScorer:
    """Model-free scorer: frame k is a flat image whose red value r sits at angle r/255 * pi/2 on a circle;
    its "patches" are that unit vector repeated, so Delta_glob = 1 - cos(dtheta), Delta_loc = |chord|."""

    def __init__(self):
        self.calls = 0

    def image_features(self, images):
        self.calls += 1
        theta = torch.tensor([im.getpixel((0, 0))[0] / 255 * math.pi / 2 for im in images])
        v = torch.stack([theta.cos(), theta.sin()], dim=-1)  # (n, 2)
        return v, v[:, None].expand(-1, 4, -1)  # (n, 4, 2)

    def text_features(self, texts):
        return F.normalize(torch.stack([torch.tensor([1.0, 0.1 * len(t)]) for t in texts]), dim=-1)


def flat(r: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (r, 0, 0))


def smooth(n: int = 9, step: int = 24) -> list[Image.Image]:
    return [flat(step * k) for k in range(n)]


def midpoint_insert(a, b, n):
    ra, rb = a.getpixel((0, 0))[0], b.getpixel((0, 0))[0]
    return [flat(round(ra + (rb - ra) * k / (n + 1))) for k in range(1, n + 1)]


STUB_CFG = AdaptiveConfig(add_floor=0.08, del_ceiling=0.01)  # one step: Delta ~0.04 (no texts)


def reds(images):
    return [im.getpixel((0, 0))[0] for im in images]


def test_loop_leaves_a_smooth_sequence_unchanged():
    frames = smooth()
    res = adapt_sequence(frames, AngleScorer(), lambda *a: pytest.fail("no insertion expected"), STUB_CFG)
    assert res.images == frames and len(res.report["rounds"]) == 1 and res.report["stopped"].startswith("converged")
    assert res.report["sem_dropped"] and "Delta_sem dropped" in res.report["note"]


def test_loop_inserts_at_a_missing_frame_and_then_stops():
    truth = smooth()
    frames = truth[:4] + truth[5:]
    calls = []

    def true_missing(a, b, n):
        calls.append((reds([a, b]), n))
        return [truth[4]]

    res = adapt_sequence(frames, AngleScorer(), true_missing, STUB_CFG)
    assert calls == [([72, 120], 1)] and reds(res.images) == reds(truth)
    first = res.report["rounds"][0]
    assert [(d["action"], d["pair"], d["n"]) for d in first["decisions"]] == [("insert", 3, 1)]
    assert res.frames[4].origin == {"source": "inserted", "round": 1, "between": ["3", "4"], "k": 1, "of": 1}
    assert len(res.report["rounds"]) == 2 and res.report["stopped"].startswith("converged")


def test_loop_inserts_two_frames_into_a_double_gap():
    truth = smooth()
    res = adapt_sequence(truth[:3] + truth[5:], AngleScorer(), midpoint_insert, STUB_CFG)
    assert reds(res.images) == reds(truth)


def test_loop_deletes_a_duplicate():
    truth = smooth()
    frames = truth[:5] + [truth[4].copy()] + truth[5:]
    res = adapt_sequence(frames, AngleScorer(), lambda *a: pytest.fail("no insertion expected"), STUB_CFG)
    assert reds(res.images) == reds(truth)
    d = res.report["rounds"][0]["decisions"]
    assert [(x["action"], x["pair"], x["applied"]) for x in d] == [("delete", 4, True)]


def test_loop_is_bounded_by_rounds_and_frames():
    frames = [flat(0), flat(200)]
    copies = lambda a, b, n: [a.copy() for _ in range(n)]  # noqa: E731  a bad inserter: the jump never closes
    res = adapt_sequence(
        frames, AngleScorer(), copies, AdaptiveConfig(add_floor=0.08, del_ceiling=0.0, max_rounds=3, max_frames=6)
    )
    assert len(res.report["rounds"]) <= 3 and 2 <= len(res.images) <= 6
    assert reds(res.images)[0] == 0 and reds(res.images)[-1] == 200


def test_loop_uses_step_texts_and_interpolates_them_for_inserted_frames():
    truth = smooth(5)
    steps = ["a", "bb", "ccc", "dddd", "eeeee"]
    res = adapt_sequence(truth[:2] + truth[3:], AngleScorer(), midpoint_insert, STUB_CFG, steps[:2] + steps[3:])
    r1 = res.report["rounds"][0]
    assert not res.report["sem_dropped"] and r1["weights"] == {"glob": 0.6, "loc": 0.2, "sem": 0.2}
    assert all(p["sem"] is not None for p in r1["pairs"])
    assert res.frames[2].text is None and res.frames[2].sem is not None
    with pytest.raises(ValueError, match="one per frame"):
        adapt_sequence(truth, AngleScorer(), midpoint_insert, STUB_CFG, steps[:3])


# ---------------------------------------------------------------- synthetic ground truth, tiny evaluators
# Corpus-wide rates with the calibrated settings: `make bench-adaptive` (docs/ADAPTIVE.md); the scoring of that
# benchmark is checked against this path in tests/test_adaptive_truth.py.


@pytest.fixture(scope="module")
def scorer():
    from pm_lightning.inference.adaptive import EncoderScorer
    from pm_lightning.models.encoders import Encoders

    return EncoderScorer(Encoders.load(clip="tiny", dino="tiny"))


def truth(domain: str, index: int):
    from pm_lightning.data.synthetic_corpus import generate_sequence, sequence_seed

    return generate_sequence(domain, sequence_seed(1, domain, index), 64)  # validation split: never trained on


@needs_tiny_eval
def test_the_tiny_evaluators_ship_their_calibration_and_generate_reads_it(scorer):
    """data/tiny-eval/adaptive_calibration.json (`make bench-adaptive`) belongs to clip=tiny, dino=tiny and is what
    config_from_args uses for them; its figures are in docs/ADAPTIVE.md (corpus-wide rates replace the hand-picked
    cases these tests pinned before the evaluators were retrained on every domain)."""
    import argparse
    import json

    from pm_lightning.inference.adaptive_settings import calibration_file, config_from_args

    record = json.loads(calibration_file("tiny", "tiny").read_text())
    assert record["encoders"] == {"clip": "tiny", "dino": "tiny"}
    cfg = config_from_args(argparse.Namespace(clip="tiny", dino="tiny", adaptive_config=None))
    assert {k: getattr(cfg, k) for k in record["config"]} == record["config"]
    seq = truth("lego", 0)
    res = adapt_sequence(seq.frames, scorer, lambda a, b, n: [a] * n, cfg=cfg)
    assert res.report["config"]["add_floor"] == record["config"]["add_floor"]  # the whole path runs with it


def test_a_round_samples_all_its_insertions_in_one_batch_call():
    """Two gaps in one sequence: both insertions of round 1 reach the batch function together, in pair order,
    and the result equals the per-pair path."""
    truth = smooth(11)
    frames = truth[:3] + truth[4:8] + truth[9:]  # gaps at pairs 2 and 6
    calls = []

    def batch(requests):
        calls.append([(reds([a, b]), n) for a, b, n in requests])
        return [midpoint_insert(a, b, n) for a, b, n in requests]

    res = adapt_sequence(frames, AngleScorer(), cfg=STUB_CFG, insert_batch=batch)
    assert calls == [[([48, 96], 1), ([168, 216], 1)]]  # one call for the round, not one per pair
    assert reds(res.images) == reds(truth)
    per_pair = adapt_sequence(frames, AngleScorer(), midpoint_insert, STUB_CFG)
    assert reds(per_pair.images) == reds(res.images) and per_pair.report == res.report
    with pytest.raises(ValueError, match="exactly one"):
        adapt_sequence(frames, AngleScorer(), midpoint_insert, STUB_CFG, insert_batch=batch)


def test_no_guard_is_inf_for_the_flag_the_settings_file_and_the_config_alike(tmp_path):
    """`del_ceiling` inf ("no guard", adaptive_rule.PAPER_RULE) passes the flag, a settings file and AdaptiveConfig;
    the other fields stay finite and text is refused. Checked red with FIELD_RULES' del_ceiling back at NON_NEGATIVE:
    the flag and the file refuse inf (and, AdaptiveConfig reading the same table, PAPER_RULE fails at import)."""
    import argparse
    import json
    import math

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    assert parser.parse_args(["--del-ceiling", "inf"]).del_ceiling == math.inf
    settings = tmp_path / "rule.json"
    settings.write_text(json.dumps({"k1": 0.8, "k2": 1.0, "add_floor": 0.0, "del_ceiling": math.inf}))  # Infinity
    cfg = config_from_args(parser.parse_args(["--adaptive-config", str(settings)]))
    assert (cfg.add_floor, cfg.del_ceiling) == (0.0, math.inf)
    for bad in ({"add_floor": math.inf}, {"k1": -1.0}, {"w_sem": "0.2"}):
        with pytest.raises(ValueError, match=f"AdaptiveConfig.{next(iter(bad))} must be"):
            AdaptiveConfig(**bad)
