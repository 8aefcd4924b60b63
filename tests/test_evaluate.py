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
        "gt_similarity",
    ]
    assert set(data["domains"]) == {"cake", "lego"} and data["domains"]["cake"]["n"] == 2
    assert len(data["samples"]) == 4 and all(SAMPLE_KEYS <= set(s) for s in data["samples"])
    assert len(data["skipped"]) == 1 and "domain" in data["skipped"][0]["reason"]
    with_gt = [s for s in data["samples"] if s["proxy_target"] == "ground_truth"]
    assert len(with_gt) == 2 and all(s["gt_similarity"] == pytest.approx(1.0, abs=1e-4) for s in with_gt)
    for s in data["samples"]:  # true sequences: every step moves towards the end in pixel space
        assert s["monotonicity_pixel"] == 1.0 and 0 < s["align"] <= 100 and 0 <= s["evenness_clip"] <= 1
    mean = data["mean"]
    assert mean["align"] == pytest.approx((data["domains"]["cake"]["align"] + data["domains"]["lego"]["align"]) / 2)
    md = out.with_suffix(".md").read_text()
    assert md.startswith("| Domain | n | Align | CLIP frames | Mono | Even |") and "| **mean over domains** | 4 |" in md
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
