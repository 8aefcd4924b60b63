"""One run directory: every output under `trainer.default_root_dir`, refusal of a used directory, short runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from pm_lightning import fit
from pm_lightning.core.run_layout import RUN_OUTPUTS, TENSORBOARD
from pm_lightning.training.run_dir import RunDirectoryInUse, check_run_directory
from tests.test_fit import small_config, with_outputs

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def full_run_config(tmp_path: Path, tiny_base: str, shards: dict, root: Path) -> Path:
    """A tiny stage-1 run with every kind of output: checkpoints, W&B (offline), LoRA exports, sample grids."""
    path = small_config(tmp_path, tiny_base, shards, max_steps=2, every=100)  # shorter than the interval
    logger = {
        "class_path": "pm_lightning.training.wandb_logger.AutoWandbLogger",
        "init_args": {"project": "pm_lightning_tests", "offline": True},
    }
    return with_outputs(path, every=0, default_root_dir=str(root), logger=logger)


WRITTEN = set(RUN_OUTPUTS) - {TENSORBOARD}  # the outputs of these configs' runs (they log to W&B)


def listing(root: Path) -> dict[str, float]:
    """Every file and its mtime; wandb-core's service log is left out: the service outlives a run inside one
    Python process (tests run several fits in one process) and keeps appending to the first run's copy."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and p.name != "debug-core.log")
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in files}


def settled_listing(root: Path, timeout: float = 20.0) -> dict[str, float]:
    """`listing` once it stops changing: wandb-core flushes a finished run's files from its own process a moment
    after `finish()` returns (seen in CI: the .wandb file and internal log touched ~0.7 s later)."""
    import time

    deadline, last = time.monotonic() + timeout, listing(root)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = listing(root)
        if now == last:
            return now
        last = now
    return last


@pytest.fixture
def run_env(tmp_path, monkeypatch, tiny_base, tiny_shards):
    """An empty working directory (to catch stray outputs) and a config whose run root is `runs/a` in it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = full_run_config(tmp_path / "cfg", tiny_base, tiny_shards, cwd / "runs" / "a")
    return cwd, config


def test_every_output_lands_in_the_run_directory_and_moves_with_it(run_env):
    cwd, config = run_env
    assert fit.main(["--config", str(config)]) == 0
    a = cwd / "runs" / "a"
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"] and sorted(p.name for p in (cwd / "runs").iterdir()) == [
        "a"
    ]
    assert {p.name for p in a.iterdir()} == WRITTEN
    assert (a / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (a / "lora").iterdir()) == ["final"]  # not one more beside the end's checkpoint
    assert (a / "samples" / "final.png").is_file() and any((a / "wandb").iterdir())

    # Lightning's own flag moves all of it; the first run is untouched
    before = settled_listing(a)
    assert fit.main(["--config", str(config), "--trainer.default_root_dir", str(cwd / "runs" / "b")]) == 0
    assert listing(a) == before
    assert {p.name for p in (cwd / "runs" / "b").iterdir()} == WRITTEN
    assert sorted(p.name for p in (cwd / "runs").iterdir()) == ["a", "b"]


def test_a_run_shorter_than_the_checkpoint_interval_resumes(run_env):
    cwd, config = run_env
    assert fit.main(["--config", str(config)]) == 0
    last = cwd / "runs" / "a" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2
    assert fit.main(["--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "3"]) == 0
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # resumed into it, no last-v1.ckpt
    assert sorted(p.name for p in (cwd / "runs" / "a" / "lora").iterdir()) == ["final"]  # the resumed run's end


def test_last_falls_back_to_the_newest_checkpoint_when_the_run_died_before_writing_last(run_env, capsys):
    """Lightning writes a step's checkpoint, then last.ckpt: a kill -9 between the two (seen in the kill campaign)
    leaves no last.ckpt, and a plain restart is refused (the directory holds a checkpoint); "last" resumes it."""
    cwd, config = run_env
    assert fit.main(["--config", str(config)]) == 0
    folder = cwd / "runs" / "a" / "checkpoints"
    (folder / "last.ckpt").rename(folder / "epoch=0-step=2.ckpt")
    (folder / "epoch=0-step=1.ckpt").write_bytes(b"older")  # an older one must not be picked
    old = (folder / "epoch=0-step=2.ckpt").stat().st_mtime_ns
    os.utime(folder / "epoch=0-step=1.ckpt", ns=(old - 10**9, old - 10**9))
    capsys.readouterr()
    assert fit.main(["--config", str(config)]) == 2  # a new run is still refused
    assert fit.main(["--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "3"]) == 0
    assert "resuming from " + str(folder / "epoch=0-step=2.ckpt") in capsys.readouterr().err
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 3


def test_last_without_a_checkpoint_starts_from_the_beginning_with_a_notice(tmp_path, capsys, run_env):
    """Lightning's meaning of `last`, what a requeued cluster job that always passes it needs."""
    cwd, config = run_env
    assert fit.main(["--config", str(config), "--ckpt_path", "last"]) == 0
    assert "no checkpoint in " + str(cwd / "runs" / "a") + " yet" in capsys.readouterr().err
    last = cwd / "runs" / "a" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2


def test_a_new_run_refuses_a_used_directory_and_start_over_moves_it_aside(run_env, capsys):
    cwd, config = run_env
    assert fit.main(["--config", str(config)]) == 0
    a = cwd / "runs" / "a"
    (a / TENSORBOARD / "version_0").mkdir(parents=True)  # as RunTensorBoardLogger writes it (this config logs to W&B)
    (a / TENSORBOARD / "version_0" / "events.out.tfevents.0").write_text("tb")  # before the fix: left behind
    before = listing(a)
    capsys.readouterr()
    assert fit.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(a) in err and "--ckpt_path last" in err and "--start_over true" in err
    assert listing(a) == before  # nothing written, nothing overwritten

    (a / "notes.txt").write_text("mine")  # not a run output: stays where it is
    assert fit.main(["--config", str(config), "--start_over", "true"]) == 0
    moved = [p for p in (cwd / "runs").iterdir() if p.name.startswith("a.prev-")]
    assert len(moved) == 1 and listing(moved[0]) == before  # the earlier run, intact
    assert (a / "notes.txt").read_text() == "mine" and not (a / "run.lock").exists()
    assert (a / "checkpoints" / "last.ckpt").is_file()


def test_check_run_directory_rules(tmp_path):
    root = tmp_path / "run"
    assert check_run_directory(root, resuming=False, start_over=False) is None  # nothing there yet
    (root / "checkpoints").mkdir(parents=True)
    (root / "samples").mkdir()
    assert check_run_directory(root, resuming=False, start_over=False) is None  # no checkpoint: nothing to lose
    (root / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunDirectoryInUse, match="--ckpt_path last"):
        check_run_directory(root, resuming=False, start_over=False)
    assert check_run_directory(root, resuming=True, start_over=False) is None
    (root / "mine.txt").write_text("user file")
    moved = check_run_directory(root, resuming=False, start_over=True)
    assert (moved / "checkpoints" / "last.ckpt").read_bytes() == b"x" and moved.name.startswith("run.prev-")
    assert sorted(p.name for p in root.iterdir()) == ["mine.txt"]  # only the run's outputs moved


def test_saved_config_is_the_run_directory_s(run_env):
    cwd, config = run_env
    assert fit.main(["--config", str(config)]) == 0
    saved = yaml.safe_load((cwd / "runs" / "a" / "config.yaml").read_text())
    assert saved["trainer"]["default_root_dir"] == str(cwd / "runs" / "a")
    assert json.dumps(saved["model"]["init_args"]["adapter"])  # the resolved model config is there
