"""`python -m pm_lightning.ablate --quick`: every row trained (real `fit` processes) and evaluated, the report and the
W&B runs written, within 5 minutes on 2 cores; a rerun resumes (nothing runs twice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import wandb_records

pytestmark = pytest.mark.slow

ROWS = ["base", "lora", "asymmetric", "masked", "masked_align", "full", "full_no_glob", "full_no_loc", "full_no_sem"]


def ablate(out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "WANDB_API_KEY"):  # no judge, no upload
        env.pop(var, None)
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR", "WANDB_CONFIG_DIR"):
        env[var] = str(out.parent / "wandb-home")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pm_lightning.ablate", "--quick", "--out", str(out), *extra],
                          cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)  # fmt: skip
    return proc, time.monotonic() - start


def run_records(folder: Path) -> list:
    (run,) = folder.glob("wandb/offline-run-*")
    return wandb_records(run)


def the_run(records):
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    return run


def test_quick_ablation_end_to_end_and_resume(tmp_path):
    if not (REPO / "data" / "shards" / "train" / "index.json").is_file():
        pytest.skip("no synthetic shards (make shards)")
    out = tmp_path / "quick"
    proc, seconds = ablate(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seconds < 300, f"--quick took {seconds:.0f} s (the budget: 5 minutes on 2 cores)"
    assert "(row, seed) pairs 9/9" in proc.stdout

    results = json.loads((out / "results.json").read_text())
    assert list(results["rows"]) == ROWS and results["missing"] == []
    for row in ROWS:
        metrics = results["rows"][row]["seeds"]["0"]["metrics"]
        assert 0 <= metrics["align"] <= 100 and 0 <= metrics["unseen_align"] <= 100
        assert {"align/lego", "align/origami", "gt_sim", "mono_px", "even_px"} <= set(metrics)
        assert (out / "pictures" / f"{row}.png").is_file()
    full = results["rows"]["full"]["seeds"]["0"]["metrics"]
    assert {"truth_removal_found", "truth_duplicate_deleted", "inserted", "train_s"} <= set(full)
    assert results["rows"]["asymmetric"]["seeds"]["0"]["metrics"]["params_flux"] > 4e9  # MakeAnything's 4.19B
    text = (out / "RESULTS.md").read_text()
    assert "Quick run" in text and "## Which claims reproduce" in text and "![Align](charts/align.png)" in text

    # each training is a real fit run: its resolved config and W&B run carry the ablation's grouping
    config = (out / "train" / "asymmetric" / "seed-0" / "config.yaml").read_text()
    assert "kind: asymmetric" in config and "seed_everything: 0" in config
    records = run_records(out / "train" / "asymmetric" / "seed-0")
    train = the_run(records)
    assert (train.run_group, train.job_type) == ("tiny-ablation", "train-stage1") and "row:asymmetric" in train.tags
    keys = {i.key for r in records if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert "resolved_config" in keys  # the whole config, not only the model's hyper-parameters
    for row in ("base", "full_no_sem"):
        run = the_run(run_records(out / "eval" / row / "seed-0"))
        assert (run.run_group, run.job_type) == ("tiny-ablation", row) and f"row:{row}" in run.tags
    summary = the_run(run_records(out))
    assert summary.job_type == "summary"
    (table,) = (next(out.glob("wandb/offline-run-*")) / "files" / "media" / "table" / "ablation").glob("table_*.json")
    assert {r[0] for r in json.loads(table.read_text())["data"]} == set(ROWS)

    markers = {p.name: p.stat().st_mtime_ns for p in (out / "jobs").iterdir()}
    again, _ = ablate(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished before") == len(markers)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "jobs").iterdir()} == markers
