"""Faults during training: non-finite losses and gradients are skipped and counted, and a run of them stops the
run with a message that names the step, the loss terms and the last good checkpoint."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from pm_lightning import fit
from tests.conftest import REPO
from tests.test_fit import adapters_of, small_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def run(tmp_path, monkeypatch, tiny_base, tiny_shards, injector: dict, max_steps=4, every=2, extra=()):
    monkeypatch.setenv("PM_RECORD", str(tmp_path / "record.jsonl"))
    cfg = small_config(tmp_path, tiny_base, tiny_shards, max_steps=max_steps, every=every)
    args = ["--config", str(cfg), "--trainer.callbacks+=tests.faults.RecordAdapters"]
    args += [f"--trainer.callbacks+={injector['class_path']}", f"--trainer.callbacks.batches={injector['batches']}"]
    code = fit.main([*args, *extra])
    rows = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    return code, rows


@pytest.mark.parametrize("injector", ["tests.faults.NaNBatch", "tests.faults.NaNGradient"])
def test_a_non_finite_step_is_skipped_counted_and_harmless(
    tmp_path, monkeypatch, tiny_base, tiny_shards, injector, caplog
):
    """The skipped step is counted in the logged `train/skipped_steps` (read back from the CSV logger's file) and
    warned with its step and loss terms. Checked red: without `self.skipped += 1` in NonFiniteGuard the logged counter
    stays 0; without its `log.warning` the warning check fails."""
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path)]
    extra = [*logger, "--trainer.logger.name", "csv", "--trainer.log_every_n_steps", "1"]
    code, rows = run(
        tmp_path, monkeypatch, tiny_base, tiny_shards, {"class_path": injector, "batches": "[1]"}, extra=extra
    )
    assert code == 0
    with open(next((tmp_path / "csv").rglob("metrics.csv"))) as f:
        logged = [float(r["train/skipped_steps"]) for r in csv.DictReader(f) if r.get("train/skipped_steps")]
    assert logged == [0.0, 1.0, 1.0, 1.0] and [r["skipped"] for r in rows] == [0, 1, 1, 1]
    assert "step 1: non-finite loss or gradient" in caplog.text and "step skipped (1 in a row)" in caplog.text
    # batch 1 was bad: no optimizer update (the adapters after it are those before it), everything finite; the
    # skipped step still counts in global_step (its batch was consumed), so max_steps counts attempted steps
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["sum"] == rows[0]["sum"] and rows[2]["sum"] != rows[1]["sum"]
    assert all(r["finite"] for r in rows)
    ckpt = adapters_of(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in ckpt.values())


def test_consecutive_non_finite_steps_stop_the_run_with_the_facts(
    tmp_path, monkeypatch, tiny_base, tiny_shards, capsys
):
    injector = {"class_path": "tests.faults.NaNBatch", "batches": "[2, 3, 4, 5]"}
    code, rows = run(
        tmp_path,
        monkeypatch,
        tiny_base,
        tiny_shards,
        injector,
        max_steps=8,
        extra=["--model.init_args.max_nonfinite_steps", "3"],
    )
    err = capsys.readouterr().err
    assert code == 3
    assert "3 consecutive steps with a non-finite loss or gradient" in err and "optimizer step 4" in err
    assert "loss/fm=nan" in err and str(tmp_path / "run" / "checkpoints" / "last.ckpt") in err
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # stopped at the third bad batch in a row (batch 4)
    assert rows[1]["sum"] == rows[2]["sum"] == rows[3]["sum"] and all(r["finite"] for r in rows)


@pytest.mark.slow
def test_an_inf_gradient_on_one_of_two_gloo_ranks_makes_both_skip(tmp_path, tiny_base, tiny_shards):
    """DDP over 2 gloo processes; after the backward of batch 1 (gradients already all-reduced) an inf goes into rank
    1's gradient only. The verdict is reduced across ranks, so both skip that step: the adapters stay equal on both
    ranks after every step, unchanged by batch 1, and both count one skipped step. Checked red: without the
    `strategy.reduce` in `NonFiniteGuard.check`, rank 0 steps and rank 1 skips, and the ranks' adapters differ from
    batch 1 on. About 60 s on 2 cores."""
    cfg = small_config(tmp_path, tiny_base, tiny_shards, max_steps=3, every=100)
    record = tmp_path / "record.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PM_RECORD=str(record))
    inject = ["--trainer.callbacks+=tests.faults.NaNGradient", "--trainer.callbacks.batches=[1]"]
    inject += ["--trainer.callbacks.ranks=[1]", "--trainer.callbacks+=tests.faults.RecordAdapters"]
    cmd = [sys.executable, "-m", "pm_lightning.fit", "--config", str(cfg), "--trainer.devices", "2"]
    cmd += ["--trainer.strategy", "ddp", *inject]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    by_rank = {r: [row for row in rows if row["rank"] == r] for r in (0, 1)}
    for rank, mine in by_rank.items():
        assert [r["step"] for r in mine] == [1, 2, 3] and [r["skipped"] for r in mine] == [0, 1, 1], rank
        assert mine[1]["sum"] == mine[0]["sum"] != mine[2]["sum"] and all(r["finite"] for r in mine), rank
    assert [r["sum"] for r in by_rank[0]] == [r["sum"] for r in by_rank[1]]  # the ranks never diverge
