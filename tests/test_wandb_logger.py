"""AutoWandbLogger settings that decide how long a run waits for an unreachable server (the runs: test_faults_logger)."""

from __future__ import annotations

from pm_lightning.core.compat import wandb_init_kwargs
from pm_lightning.training.wandb_logger import AutoWandbLogger


def test_online_runs_wait_at_most_init_timeout_even_when_the_cli_passes_settings_none():
    logger = AutoWandbLogger(project="p", offline=False, init_timeout=7, settings=None)  # what LightningCLI does
    assert wandb_init_kwargs(logger)["settings"].init_timeout == 7
    assert logger.fallback is None


def test_offline_runs_need_no_server_settings():
    logger = AutoWandbLogger(project="p", offline=True)
    assert wandb_init_kwargs(logger).get("settings") is None and logger.auto_offline


def test_a_resumed_online_fit_continues_its_latest_w_and_b_run(tmp_path):
    (tmp_path / "wandb" / "run-20261201_100000-first1").mkdir(parents=True)
    (tmp_path / "wandb" / "run-20261201_110000-later2").mkdir()
    (tmp_path / "wandb" / "offline-run-20261201_120000-offln3").mkdir()  # an offline part cannot be continued
    online = AutoWandbLogger(project="p", offline=False, save_dir=str(tmp_path))
    assert online.continue_run() == "later2" and wandb_init_kwargs(online)["id"] == "later2"
    assert wandb_init_kwargs(online)["resume"] == "allow"  # Lightning's: the server appends to that run
    offline = AutoWandbLogger(project="p", offline=True, save_dir=str(tmp_path))
    assert offline.continue_run() is None and wandb_init_kwargs(offline)["id"] is None
    fresh = AutoWandbLogger(project="p", offline=False, save_dir=str(tmp_path / "new"))
    assert fresh.continue_run() is None and wandb_init_kwargs(fresh)["id"] is None
