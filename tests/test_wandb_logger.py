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
