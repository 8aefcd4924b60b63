"""One run per directory (a lock with stale detection), `--start_over` in the default root `.`, and resume from the
newest checkpoint that loads: what a user sees when two runs meet, a run was killed, or a checkpoint is damaged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pm_lightning import fit
from tests.conftest import REPO
from tests.test_fit import small_config
from tests.test_run_dir import listing

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
HOLD = "import sys, time; from pm_lightning.training.run_lock import RunLock; RunLock.acquire(sys.argv[1]); " \
       "print('held', flush=True); time.sleep(600)"  # fmt: skip


def holder(root: Path) -> subprocess.Popen:
    """Another process that holds the run directory's lock (a live run), until killed."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_run_directory_refuses_a_second_run_and_a_dead_runs_lock_is_taken_over(
    tmp_path, tiny_base, tiny_shards, capsys
):
    config = small_config(tmp_path, tiny_base, tiny_shards, max_steps=1, every=1)
    root = tmp_path / "run"
    live = holder(root)
    try:
        before = listing(root)
        for extra in ([], ["--start_over", "true"], ["--ckpt_path", "last"]):
            assert fit.main(["--config", str(config), *extra]) == 2, extra
            err = capsys.readouterr().err
            assert f"run directory {root} is in use by another run (pid {live.pid} on " in err, extra
            assert listing(root) == before  # nothing written, nothing moved
    finally:
        live.kill()
        live.wait()
    assert fit.main(["--config", str(config)]) == 0  # its lock file is left, but the run is gone
    assert f"the lock of a run that is gone (pid {live.pid} on " in capsys.readouterr().err
    assert not (root / "run.lock").exists() and (root / "checkpoints" / "last.ckpt").is_file()


def test_start_over_in_the_default_root_moves_only_the_runs_outputs(tmp_path, monkeypatch, tiny_base, tiny_shards):
    """`--trainer.default_root_dir` unset means `.`: start over used to crash there ("empty name")."""
    config = small_config(tmp_path / "cfg", tiny_base, tiny_shards, max_steps=1, every=1)
    cfg = yaml.safe_load(config.read_text())
    del cfg["trainer"]["default_root_dir"]
    config.write_text(yaml.safe_dump(cfg))
    cwd = tmp_path / "project"
    cwd.mkdir()
    (cwd / "notes.md").write_text("the user's notes")
    monkeypatch.chdir(cwd)
    assert fit.main(["--config", str(config)]) == 0
    first = listing(cwd / "checkpoints")
    assert fit.main(["--config", str(config)]) == 2  # refused: the directory holds a run
    assert fit.main(["--config", str(config), "--start_over", "true"]) == 0
    (aside,) = cwd.glob("prev-*")
    assert listing(aside / "checkpoints") == first and (cwd / "notes.md").read_text() == "the user's notes"
    assert sorted(p.name for p in cwd.iterdir()) == sorted(["checkpoints", "config.yaml", "notes.md", aside.name])


def test_resume_skips_a_damaged_last_ckpt_for_the_newest_intact_one(tmp_path, tiny_base, tiny_shards, capsys):
    config = small_config(tmp_path, tiny_base, tiny_shards, max_steps=2, every=1)
    assert fit.main(["--config", str(config)]) == 0
    folder = tmp_path / "run" / "checkpoints"
    last = folder / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a cut copy left before this issue
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert fit.main(["--config", str(config), "--ckpt_path", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert f"--ckpt_path {damaged} cannot be read" in err and "--ckpt_path last resumes it" in err
    assert fit.main(["--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "3"]) == 0
    err = capsys.readouterr().err
    newest = next(p for p in folder.glob("*step=2*.ckpt"))
    assert "last.ckpt cannot be read" in err and f"resuming from {newest}" in err
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
