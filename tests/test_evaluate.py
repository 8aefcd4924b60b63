"""`python -m pm_lightning.evaluate` on a folder of samples: table and JSON with the documented keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pm_lightning import evaluate
from pm_lightning.core.paths import tiny_eval_dir
from pm_lightning.data.grid import frames_to_grid, layout_for
from pm_lightning.data.synthetic_corpus import generate_sequence

pytestmark = pytest.mark.skipif(
    not (tiny_eval_dir() / "clip" / "open_clip_config.json").is_file(),
    reason="data/tiny-eval missing: run `make tiny-eval`",
)
SAMPLE_KEYS = {
    "sample",
    "domain",
    "prompt",
    "frames",
    "proxy_target",
    "align",
    "clip_frames",
    "monotonicity_clip",
    "evenness_clip",
    "monotonicity_pixel",
    "evenness_pixel",
    "coh_proxy",
    "inserted",
    "deleted",
    "scored_grid",
}


def write_sample(folder: Path, domain: str, seed: int, ground_truth: bool) -> None:
    """A "generated" sample: a synthetic sequence as generate writes it (+ its true frames as ground truth)."""
    seq = generate_sequence(domain, seed)
    (folder / "frames").mkdir(parents=True)
    for k, frame in enumerate(seq.frames):
        frame.save(folder / "frames" / f"{k:02d}.png")
    frames_to_grid(seq.frames, *layout_for(len(seq.frames))).save(folder / "grid.png")
    report = {"prompt": seq.caption, "domain": domain, "steps": seq.steps}
    if ground_truth:
        (folder / "gt").mkdir()
        for k, frame in enumerate(generate_sequence(domain, seed).frames):
            frame.save(folder / "gt" / f"{k:02d}.png")
        report["ground_truth"] = "gt"
    (folder / "report.json").write_text(json.dumps(report))


@pytest.fixture
def samples(tmp_path) -> Path:
    root = tmp_path / "samples"
    for domain in ("cake", "lego"):
        for i in range(2):
            write_sample(root / domain / f"{i:02d}", domain, seed=100 + i, ground_truth=(i == 0))
    (root / "broken").mkdir()
    (root / "broken" / "report.json").write_text(json.dumps({"prompt": "x"}))  # no domain: skipped, reported
    return root


def test_cli_writes_table_and_json(samples, tmp_path, capsys):
    out = tmp_path / "res" / "results.json"
    evaluate.main(["--samples", str(samples), "--out", str(out)])
    data = json.loads(out.read_text())
    assert set(data) >= {"columns", "domains", "mean", "samples", "skipped", "encoders", "markdown"}
    assert list(data["columns"]) == [
        "align",
        "clip_frames",
        "monotonicity_clip",
        "evenness_clip",
        "monotonicity_pixel",
        "evenness_pixel",
        "coh_proxy",
        "gt_similarity",
    ]
    assert set(data["domains"]) == {"cake", "lego"} and data["domains"]["cake"]["n"] == 2
    assert len(data["samples"]) == 4 and all(SAMPLE_KEYS <= set(s) for s in data["samples"])
    assert len(data["skipped"]) == 1 and "domain" in data["skipped"][0]["reason"]
    with_gt = [s for s in data["samples"] if s["proxy_target"] == "ground_truth"]
    assert len(with_gt) == 2 and all(s["gt_similarity"] == pytest.approx(1.0, abs=1e-4) for s in with_gt)
    for s in data["samples"]:  # true sequences: every step moves towards the end in pixel space
        assert s["monotonicity_pixel"] == 1.0 and 0 < s["align"] <= 100 and 0 <= s["evenness_clip"] <= 1
        assert s["coh_proxy"] == pytest.approx(s["monotonicity_pixel"] * s["evenness_pixel"])
        assert (s["inserted"], s["deleted"], s["scored_grid"]) == (0, 0, "stage1_grid")  # no adaptive steps
    mean = data["mean"]
    assert mean["align"] == pytest.approx((data["domains"]["cake"]["align"] + data["domains"]["lego"]["align"]) / 2)
    md = out.with_suffix(".md").read_text()
    assert (
        md.startswith("| Domain | n | Align | CLIP frames | Mono | Even | Mono px | Even px | Coh proxy | GT sim |")
        and "| **mean over domains** | 4 |" in md
    )
    assert md.strip() in capsys.readouterr().out


def test_cli_with_judge_adds_its_columns(samples, tmp_path, monkeypatch):
    judge_mod = pytest.importorskip("pm_lightning.eval.judge")

    class FakeJudge:
        calls: list = []

        def score(self, grid, prompt):
            self.calls.append(prompt)
            ok = "cake" in prompt
            return judge_mod.JudgeResult(
                4.0 if ok else None,
                5.0 if ok else None,
                3.0 if ok else None,
                error=None if ok else "request failed: timed out",
            )

    seen = {}
    monkeypatch.setattr(judge_mod.Judge, "from_env", classmethod(lambda cls, **kw: seen.update(kw) or FakeJudge()))
    out = tmp_path / "judged.json"
    data = evaluate.main(
        [
            "--samples",
            str(samples),
            "--out",
            str(out),
            "--judge",
            "--judge-model",
            "m",
            "--judge-base-url",
            "http://127.0.0.1:9/v1",
            "--judge-timeout",
            "3",
        ]
    )
    assert seen["model"] == "m" and seen["base_url"] == "http://127.0.0.1:9/v1" and seen["timeout"] == 3.0
    assert {"accuracy", "coherence", "usability"} <= set(data["columns"])
    assert data["domains"]["cake"]["coherence"] == 5.0 and data["domains"]["lego"]["coherence"] is None
    assert data["mean"]["coherence"] == 5.0  # mean over the domains that have a score
    assert any(s["judge_error"] for s in data["samples"])
    assert "| Acc | Coh | Use |" in out.with_suffix(".md").read_text()


def adaptive_section(*decisions: dict) -> dict:
    """A report's `adaptive` section as run_adaptive writes it (the keys edits are counted from)."""
    return {"rounds": [{"round": 1, "decisions": list(decisions)}]}


def write_adapted(folder: Path, stage1: list, final: list, adaptive: dict | None) -> None:
    """A stage-2 sample as the ablation's row evaluation writes it: grid.png is the stage-1 grid (3 x 3),
    frames/ the final sequence after the adaptive steps."""
    (folder / "frames").mkdir(parents=True)
    for k, frame in enumerate(final):
        frame.save(folder / "frames" / f"{k:02d}.png")
    frames_to_grid(stage1, 3, 3).save(folder / "grid.png")
    report = {"prompt": "a lego tower of red bricks", "domain": "lego", "settings": {"rows": 3, "cols": 3},
              "adaptive": adaptive}  # fmt: skip
    (folder / "report.json").write_text(json.dumps(report))


def test_a_stage2_sample_is_scored_on_its_final_sequence(tmp_path):
    """Align of a sample whose adaptive steps inserted or deleted frames is the CLIP score of its final frames in the
    stage-1 layout (resampled by progress fraction), not of the stage-1 grid; with no applied edit it is the stage-1
    grid's Align. The judge sees every final frame in a square grid. Checked red: scoring `sample.grid` whatever
    the edits (the pre-fix behaviour) fails the final-sequence Align assertions (68.90 against 67.38 for the
    inserted sample) and the judge's."""
    import numpy as np
    from PIL import Image

    from pm_lightning.eval.judge import JudgeResult
    from pm_lightning.eval.sample_table import evaluate as score_folder
    from pm_lightning.eval.scores import clip_score
    from pm_lightning.models.encoders import Encoders

    seq = generate_sequence("lego", 5)
    stage1 = seq.frames  # 9 frames, 3 x 3
    blend = Image.blend(stage1[1], stage1[2], 0.5)
    inserted = [*stage1[:2], blend, *stage1[2:]]  # 10 frames: one inserted between 1 and 2
    swapped = [*stage1[:2], blend, *stage1[2:6], *stage1[7:]]  # 9 frames: that insertion and frame 6 deleted
    insert = {"action": "insert", "pair": 1, "n": 1, "applied": True}
    delete = {"action": "delete", "pair": 6, "frame": 6, "applied": True}
    refused = {"action": "delete", "pair": 3, "frame": 4, "applied": False}
    root = tmp_path / "samples"
    write_adapted(root / "a_stage1", stage1, stage1, None)
    write_adapted(root / "b_untouched", stage1, stage1, adaptive_section(refused))
    write_adapted(root / "c_inserted", stage1, inserted, adaptive_section(insert))
    write_adapted(root / "d_swapped", stage1, swapped, adaptive_section(insert, delete, refused))

    judged: list[Image.Image] = []

    class RecordingJudge:
        def score(self, grid, prompt):
            judged.append(grid)
            return JudgeResult(3.0, 3.0, 3.0)

    enc = Encoders.load(clip="tiny", dino="tiny", device="cpu")
    rows = {Path(s["sample"]).name: s for s in score_folder(root, enc, RecordingJudge())["samples"]}
    text = enc.text_embeddings(["a lego tower of red bricks"])

    def align_of(grid):
        return clip_score(enc.image_embeddings([grid]), text).item()

    stage1_align = align_of(frames_to_grid(stage1, 3, 3))
    assert rows["a_stage1"]["align"] == pytest.approx(stage1_align, abs=1e-4)
    assert rows["b_untouched"]["align"] == pytest.approx(stage1_align, abs=1e-4)  # a refused edit changes nothing
    assert [rows[k]["scored_grid"] for k in sorted(rows)] == [
        "stage1_grid",
        "stage1_grid",
        "final_sequence",
        "final_sequence",
    ]
    assert [(rows[k]["inserted"], rows[k]["deleted"]) for k in sorted(rows)] == [(0, 0), (0, 0), (1, 0), (1, 1)]
    # 10 final frames into 9 cells: cell k shows frame round(k * 9 / 8) = 0 1 2 3 4 6 7 8 9 (4.5 rounds to 4)
    resampled = frames_to_grid([inserted[j] for j in (0, 1, 2, 3, 4, 6, 7, 8, 9)], 3, 3)
    assert rows["c_inserted"]["align"] == pytest.approx(align_of(resampled), abs=1e-4)
    assert rows["d_swapped"]["align"] == pytest.approx(align_of(frames_to_grid(swapped, 3, 3)), abs=1e-4)
    for name in ("c_inserted", "d_swapped"):
        assert abs(rows[name]["align"] - stage1_align) > 1e-3
    assert rows["c_inserted"]["frames"] == 10  # the per-frame metrics read every final frame

    # the judge: in sample order, the stage-1 grid twice, then the final frames in a square grid
    def px(im):
        return np.asarray(im.convert("RGB"))

    grid_png = px(Image.open(root / "a_stage1" / "grid.png"))
    assert len(judged) == 4 and all(np.array_equal(px(g), grid_png) for g in judged[:2])
    w, h = stage1[0].size
    ten = px(judged[2])
    assert ten.shape == (4 * h, 4 * w, 3)  # 10 frames: 4 x 4, serpentine, the 6 cells after the last one white
    assert np.array_equal(ten[2 * h : 3 * h, w : 2 * w], px(inserted[9]))  # frame 9: row 2 (left to right), col 1
    assert (ten[2 * h : 3 * h, 2 * w :] == 255).all() and (ten[3 * h :] == 255).all()
    assert np.array_equal(px(judged[3]), px(frames_to_grid(swapped, 3, 3)))
