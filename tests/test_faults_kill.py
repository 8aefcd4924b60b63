"""kill -9 at 12 moments (`make test-kill`; the slow tier runs 7, one of each kind) of a tiny fit (during a step, a checkpoint write, the final rename of `last.ckpt`, between
a checkpoint and its last.ckpt, a LoRA export, sample rendering, and at random times), with TMPDIR on another
filesystem than the run directory (a tmpfs: where a save that moves its temporary file makes a copy), then
`--ckpt_path last` until the run completes: every resume succeeds, the final adapters and LoRA files are
bit-identical to an uninterrupted run, and no checkpoint is ever left half-written, not even right after the kill.

Checked red (the final-write moment alone, `use_atomic_saves` made a no-op so Lightning's fsspec save runs): the
kill half-way through the copy from TMPDIR leaves a truncated `last.ckpt` and the check after the kill fails."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pm_lightning.training.run_dir import earlier_checkpoints
from tests.conftest import REPO
from tests.test_fit import small_config, with_outputs

pytestmark = pytest.mark.slow
STEPS, EVERY = 6, 2
ALL = os.environ.get("PM_KILL_MOMENTS") == "all"  # `make test-kill`: all 12; the slow tier: one of each kind (7)
MOMENTS = [
    {"moment": "backward", "step": 3},
    {"moment": "checkpoint-write", "step": 4},  # last.ckpt of step 2 must survive
    {"moment": "final-write", "step": 4},  # the rename (a copy, were the temporary file in TMPDIR) of last.ckpt
    {"moment": "before-last", "step": 2},  # step 2's checkpoint written, no last.ckpt: "last" means that one
    {"moment": "lora-write", "tag": "final"},
    {"moment": "samples", "tag": "final"},
    *(
        []
        if not ALL
        else [
            {"moment": "backward", "step": 0},
            {"moment": "checkpoint-write", "step": 2},  # the first checkpoint: nothing to resume, start again
            {"moment": "lora-write", "tag": "step-000002"},
            {"moment": "samples", "tag": "step-000004"},
        ]
    ),
    # random moments: a random delay after a random step starts (a step, its checkpoint, exports, samples...)
    *(
        {
            "moment": "timer",
            "step": random.Random(seed).randrange(STEPS - 1),
            "seconds": round(random.Random(seed).uniform(0.05, 0.6), 2),
        }
        for seed in ((1, 2) if ALL else (1,))
    ),
]


def config(tmp_path, tiny_base, tiny_shards) -> Path:
    return with_outputs(
        small_config(tmp_path, tiny_base, tiny_shards, max_steps=STEPS, every=EVERY), every=EVERY, at_start=True
    )


@pytest.fixture
def tmpdir_elsewhere(tmp_path):
    """A TMPDIR on another filesystem than the run directory (/dev/shm, a tmpfs), as on clusters whose run
    directories are on NFS / Lustre."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.fail("needs /dev/shm on another filesystem than the test's tmp_path")
    folder = tempfile.mkdtemp(prefix="pm-kill-", dir=shm)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def fit(cfg: Path, *extra: str, tmpdir: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    env["TMPDIR"] = tmpdir or tempfile.gettempdir()
    cmd = [sys.executable, "-m", "pm_lightning.fit", "--config", str(cfg), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def every_file_reads(run: Path) -> None:
    """Every LoRA file and checkpoint the run left reads completely (temporary names start with a dot)."""
    for f in run.rglob("*.safetensors"):
        load_file(f)
    for f in run.rglob("*.ckpt"):
        torch.load(f, map_location="cpu", weights_only=True)


def outcome(run: Path) -> dict:
    """The run's final adapters and final LoRA files; every file it left must read completely."""
    every_file_reads(run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    loras = {f.name: load_file(f) for f in sorted((run / "lora" / "final").glob("*.safetensors"))}
    return {"step": ckpt["global_step"], "adapters": ckpt["state_dict"], "loras": loras}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_at_each_moment_then_resume_gives_the_uninterrupted_result(
    tmp_path, tiny_base, tiny_shards, tmpdir_elsewhere
):
    straight = config(tmp_path / "straight", tiny_base, tiny_shards)
    assert fit(straight, tmpdir=tmpdir_elsewhere).returncode == 0
    want = outcome(tmp_path / "straight" / "run")
    assert want["step"] == STEPS and want["loras"]
    report = []
    for i, moment in enumerate(MOMENTS):
        cfg = config(tmp_path / f"kill{i}", tiny_base, tiny_shards)
        run = tmp_path / f"kill{i}" / "run"
        killer = ["--trainer.callbacks+=tests.faults.KillAt"] + [
            f"--trainer.callbacks.{k}={v}" for k, v in moment.items()
        ]
        first = fit(cfg, *killer, tmpdir=tmpdir_elsewhere)
        killed = first.returncode == -9 and not complete(run)  # killed before the run was done
        every_file_reads(run)  # right after the kill: nothing half-written at a final name
        resumes = 0
        while not complete(run):
            resume = ["--ckpt_path", "last"] if earlier_checkpoints(run) else []  # what a user would do
            proc = fit(cfg, *resume, tmpdir=tmpdir_elsewhere)
            assert proc.returncode == 0, (moment, proc.stderr[-3000:])
            resumes += 1
            assert resumes <= 2, moment
        got = outcome(run)
        assert got["step"] == STEPS and same(got["adapters"], want["adapters"]), moment
        assert got["loras"].keys() == want["loras"].keys(), moment
        assert all(same(got["loras"][k], want["loras"][k]) for k in want["loras"]), moment
        report.append({**moment, "killed": killed, "resumes": resumes})
    (tmp_path / "campaign.json").write_text(json.dumps(report, indent=1))
    assert all(r["killed"] for r in report), json.dumps(report)
    print(json.dumps(report))


def complete(run: Path) -> bool:
    """The run reached its last step and wrote its final LoRA files."""
    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file() or torch.load(last, map_location="cpu", weights_only=True)["global_step"] < STEPS:
        return False
    return (run / "lora" / "final" / "unseen.safetensors").is_file()
