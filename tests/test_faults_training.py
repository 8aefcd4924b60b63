"""Faults during training: non-finite losses and gradients are skipped and counted, and a run of them stops the
run with a message that names the step, the loss terms and the last good checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from pm_lightning import fit
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
def test_a_non_finite_step_is_skipped_counted_and_harmless(tmp_path, monkeypatch, tiny_base, tiny_shards, injector):
    code, rows = run(tmp_path, monkeypatch, tiny_base, tiny_shards, {"class_path": injector, "batches": "[1]"})
    assert code == 0
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
