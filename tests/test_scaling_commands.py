"""docs/SCALING.md's CPU commands as written, on the default shards (`make shards`: ONE validation shard): DDP and
FSDP2 on 2 processes train, and their validation figures equal one process's on the same samples."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import assert_clean_exit
from tests.readme_commands import Command, commands

pytestmark = pytest.mark.slow
SHARDS = REPO / "data" / "shards"


def doc_fit_commands(section: str = "Try it on CPU") -> dict[str, Command]:
    """The `fit` lines of a docs/SCALING.md section's blocks, by strategy file stem (ddp, fsdp, hsdp)."""
    text = (REPO / "docs" / "SCALING.md").read_text()
    block = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    out = {}
    for cmd in commands(block):
        if cmd.module == "fit":
            strategy = next(Path(c).stem for c in cmd.values("--config") if "strategies/" in c)
            out[strategy] = cmd
    return out


def run(cmd: Command, out: Path, *extra: str) -> tuple[dict[int, dict[str, float]], float]:
    """The command as written (python = this interpreter), writing into `out` and logging to CSV there; its
    validation figures by step and its wall time."""
    argv = [sys.executable, *cmd.argv[1:], *extra, "--trainer.default_root_dir", str(out)]
    argv += ["--trainer.logger", json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                             "init_args": {"save_dir": str(out / "csv")}})]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONFAULTHANDLER="1")
    start = time.monotonic()
    proc = subprocess.run(
        argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1200
    )
    seconds = time.monotonic() - start
    out.mkdir(parents=True, exist_ok=True)
    assert_clean_exit(proc, out)
    figures: dict[int, dict[str, float]] = {}
    logged = next((out / "csv").rglob("metrics.csv"), None)  # none when nothing was logged (no validation)
    for row in csv.DictReader(open(logged)) if logged else []:
        val = {k: float(v) for k, v in row.items() if k.startswith("val/") and v}
        if val:
            figures.setdefault(int(row["step"]), {}).update(val)
    print(f"{' '.join(cmd.argv[3:])} {' '.join(extra)}: {seconds:.0f} s")
    return figures, seconds


@pytest.mark.skipif(not (SHARDS / "val" / "index.json").is_file(), reason="no default shards: run `make shards`")
def test_scaling_doc_commands_run_on_one_validation_shard_and_match_one_process(tmp_path):
    """Before the fix, rank 1 of either command stopped with "epoch 0 of the shards yielded no batch" (the one
    validation shard went to rank 0) and rank 0 died in gloo. Each rank now gets 4 batches of its slice of the 144
    validation grids; DDP's and FSDP2's figures agree at step 0 and after 2 steps. That these figures equal one
    process's on the same grids is tests/test_rank_slice.py's (in process, 2 to 5 ranks): a third `fit` here to show
    it again cost 110 s of the slow tier's budget. The doc lines carry `experiments/overlays/no_samples.yaml`: the 9 sample
    prompts rendered before and after cost more than the training (sample grids under FSDP2 are tests/test_fsdp2.py's)."""
    assert len(json.loads((SHARDS / "val" / "index.json").read_text())["shards"]) == 1
    docs = doc_fit_commands()
    assert set(docs) == {"ddp", "fsdp"}
    assert all(
        c.values("--trainer.devices") == ["2"] and c.values("--trainer.limit_val_batches") == [] for c in docs.values()
    )
    ddp, _ = run(docs["ddp"], tmp_path / "ddp")
    fsdp, _ = run(docs["fsdp"], tmp_path / "fsdp")
    assert sorted(ddp) == sorted(fsdp) == [0, 1]  # validation at step 0 and after the 2 steps
    assert ddp[0].keys() == fsdp[0].keys() and len(ddp[0]) > 5  # the mean and every domain's
    for key, value in ddp[0].items():
        assert fsdp[0][key] == pytest.approx(value, rel=1e-5), key
    for key, value in ddp[1].items():
        assert fsdp[1][key] == pytest.approx(value, rel=1e-4), key
    assert ddp[1]["val/loss_fm"] != ddp[0]["val/loss_fm"]  # training moved the adapters
    for run_dir in (tmp_path / "ddp", tmp_path / "fsdp"):  # the overlay kept the exports, dropped the sample grids
        assert (run_dir / "lora" / "final" / "unseen.safetensors").is_file() and not (run_dir / "samples").exists()
