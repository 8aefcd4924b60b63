"""bench/insertion.py: baselines and metrics on hand-made frames, the missing-LoRA exit, a --quick run end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import REPO
from tests.helpers import load_bench

BENCH = REPO / "bench" / "insertion.py"


@pytest.fixture(scope="module")
def ins():
    return load_bench(BENCH.name, "insertion_bench")


def frame(seed: int, size: int = 16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


class MeanColour:
    """A stand-in encoder: the L2-normalised mean colour (+1), so identical images have cosine 1."""

    def image_embeddings(self, images):
        x = torch.tensor(np.stack([np.asarray(im.convert("RGB"), np.float64).mean((0, 1)) + 1 for im in images]))
        return F.normalize(x, dim=-1)


def test_baselines_on_a_hand_made_case(ins):
    a, b = frame(0), frame(1)
    truth = Image.blend(a, b, 0.5)  # f_{i+1} is exactly the cross-fade of its neighbours
    s = ins.Sample("g", "d", "d/0", 0, a, truth, b, "caption")
    s.candidates.update(ins.baselines(a, b))
    scores = ins.score([s], MeanColour())
    fade, near = scores[ins.BASELINES[0]], scores[ins.BASELINES[1]]
    assert fade["mse"][0] == 0.0 and fade["psnr"][0] == ins.PSNR_CAP
    assert fade["clip"][0] == pytest.approx(1.0, abs=1e-12)
    hand = ((np.asarray(a, np.float64) - np.asarray(truth, np.float64)) / 255.0) ** 2
    assert near["mse"][0] == pytest.approx(hand.mean(), rel=1e-12)  # the nearer neighbour of the middle is f_i
    assert near["psnr"][0] == pytest.approx(10 * np.log10(1 / hand.mean()))
    assert list(scores) == list(ins.BASELINES)  # only the methods every sample has
    assert "vae_mse" not in fade  # no VAE'd frames given


def test_win_rates_and_cluster_bootstrap(ins):
    a, b = frame(2), frame(3)
    truth = Image.blend(a, b, 0.5)
    samples = []
    for k, cand in enumerate([truth, a, truth, a]):  # stage 2 exact twice, a copy of f_i twice
        s = ins.Sample("g", "d", f"d/{k // 2}", k, a, truth, b, "c", {ins.METHODS[0]: cand})
        s.candidates.update(ins.baselines(a, b))
        samples.append(s)
    scores = ins.score(samples, None)
    assert "clip" not in scores[ins.METHODS[0]]
    _, vs = ins.group_tables(samples, scores)
    near_row = next(line for line in vs.splitlines() if line.startswith(f"| {ins.BASELINES[1]} |"))
    assert "| 50% |" in near_row  # beats the copy of f_i when exact, ties (not a win) when it is that copy
    line = ins.verdict(scores)
    assert f"vs {ins.BASELINES[0]}: MSE no, CLIP -" in line and f"vs {ins.BASELINES[1]}: MSE yes, CLIP -" in line
    mean, low, high = ins.bootstrap_ci(np.array([1.0, 1.0, 3.0, 3.0]), np.array(["x", "x", "y", "y"]))
    assert mean == 2.0 and 1.0 <= low <= mean <= high <= 3.0
    assert ins.bootstrap_ci(np.ones(5), np.arange(5)) == (1.0, 1.0, 1.0)


def test_missing_lora_files_exit_2(ins, tmp_path, monkeypatch, capsys):
    import pm_lightning.inference.tiny_defaults as td

    monkeypatch.setattr(td, "default_lora", lambda kind, domain=None: tmp_path / "none.safetensors")
    doc = tmp_path / "STAGE2.md"
    assert ins.main(["--quick", "--doc", str(doc)]) == 2
    assert "make train-stage2" in capsys.readouterr().err and not doc.exists()


def test_quick_run_writes_its_section(ins, tmp_path):
    from pm_lightning.inference.tiny_defaults import default_lora, fused_stage1

    if not (default_lora("stage2").is_file() and fused_stage1("stage2").is_file()):
        pytest.skip("no trained tiny stage-2 LoRA under runs/ (`make train-stage2`)")
    doc = tmp_path / "STAGE2.md"
    original = ins.STAGE2_MD.read_text()
    doc.write_text(original)
    out = ins.run(ins.parse_args(["--quick", "--doc", str(doc)]))
    text = doc.read_text()
    assert text.count(ins.SECTION + "\n") == 1 and out["section"].rstrip() in text
    before = original.split("\n" + ins.SECTION + "\n")[0].rstrip()
    assert text.startswith(before)  # the other sections are untouched
    assert set(out["results"]) == {"training domains", "held-out domains"}
    for scores in out["results"].values():
        assert list(scores) == list(ins.METHODS)
        assert all(len(v) == 2 and np.isfinite(v).all() for m in scores.values() for v in m.values())
        assert all(-1.0001 <= c <= 1.0001 for m in scores.values() for c in m["clip"])
        assert (scores[ins.METHODS[3]]["vae_mse"] == 0).all()  # the ceiling is the truth in VAE space
    assert "| stage 2 |" in out["section"] and "--quick" in out["section"]
    assert ins.STAGE2_MD.read_text() == original  # the real doc is not written
