"""Fault injectors used by the reliability tests, as Lightning callbacks a config can name
(`--trainer.callbacks+=tests.faults.NaNBatch --trainer.callbacks.steps=[1]`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from lightning.pytorch import Callback


class NaNBatch(Callback):
    """Poison the pixels of the batches with these indices (counted over the run's batches)."""

    def __init__(self, batches: list[int]):
        self.batches, self.seen = set(batches), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen in self.batches:
            batch["pixels"].fill_(float("nan"))
        self.seen += 1


class NaNGradient(Callback):
    """Put an inf into one adapter gradient after the backward of these batches."""

    def __init__(self, batches: list[int]):
        self.batches, self.seen = set(batches), 0

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.seen in self.batches:
            grad = next(p.grad for p in pl_module.trainable_parameters() if p.grad is not None)
            grad.view(-1)[0] = float("inf")
        self.seen += 1


class RecordAdapters(Callback):
    """After every batch: optimizer step count and a digest of the adapters, to $PM_RECORD (JSON lines)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        params = pl_module.trainable_parameters()
        row = {
            "step": trainer.global_step,
            "sum": float(sum(p.detach().double().sum() for p in params)),
            "finite": all(bool(torch.isfinite(p).all()) for p in params),
        }
        with Path(os.environ["PM_RECORD"]).open("a") as f:
            f.write(json.dumps(row) + "\n")
