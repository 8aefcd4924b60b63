"""A callback for the DDP test: every rank dumps its adapter weights and the keys it trained on."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch import Callback

from pm_lightning.models.adapters import adapter_state_dict


class DumpAdapters(Callback):
    """Writes `$PM_DUMP_DIR/rank<N>.pt` at the end of training."""

    def __init__(self):
        self.batch_keys: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_keys.extend(batch["key"])

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(os.environ["PM_DUMP_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().clone() for k, v in adapter_state_dict(pl_module.transformer).items()}
        torch.save(
            {"step": trainer.global_step, "weights": weights, "batch_keys": self.batch_keys},
            out / f"rank{trainer.global_rank}.pt",
        )
