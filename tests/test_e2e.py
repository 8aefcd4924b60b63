"""End to end: the real `experiments/tiny.yaml` through the CLI for a few steps, in its own run directory."""

from __future__ import annotations

import pytest
import torch

from pm_lightning import fit
from pm_lightning.core.paths import experiment_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")]


def test_the_tiny_experiment_runs_as_configured(tmp_path, monkeypatch, tiny_shards):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs" / "tiny-smoke"
    args = [
        "--config",
        str(experiment_config("tiny")),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--data.train_shards",
        tiny_shards["train"],
        "--data.val_shards",
        tiny_shards["val"],
        "--data.resolution",
        "96",
        "--data.batch_size",
        "2",
    ]
    assert fit.main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing outside the run directory
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["adapter"]["kind"] == "masked"
    domains = ckpt["hyper_parameters"]["domains"]
    assert sorted(p.name for p in (root / "lora" / "final").iterdir()) == sorted(
        [f"{d}.safetensors" for d in domains] + ["unseen.safetensors", "README.md", "images"]  # + model card
    )
    assert (root / "samples" / "step-000000.png").is_file() and (root / "samples" / "final.json").is_file()
    assert (root / "config.yaml").is_file() and any((root / "wandb").iterdir())
