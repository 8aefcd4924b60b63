"""A callback for the DDP test: every rank dumps its adapter weights and the keys it trained on."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch import Callback

from pm_lightning.models.adapter_state import adapter_state_dict


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


class ShardProbe(Callback):
    """Writes `$PM_DUMP_DIR/shard-rank<N>.pt`: how the transformer's parameters are stored after a training step
    (DTensor or not, dtypes of frozen and trainable ones, frozen parameters holding a gradient)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step != 0:
            return
        from torch.distributed.tensor import DTensor

        params = list(pl_module.transformer.parameters())
        probe = {
            "dtensor": all(isinstance(p, DTensor) for p in params),
            "frozen_dtypes": sorted({str(p.dtype) for p in params if not p.requires_grad}),
            "trainable_dtypes": sorted({str(p.dtype) for p in params if p.requires_grad}),
            "frozen_with_grad": sum(p.grad is not None for p in params if not p.requires_grad),
            "trainable_with_grad": sum(p.grad is not None for p in params if p.requires_grad),
            "units": getattr(trainer.strategy, "num_units", None),
            "placements": sorted({str(getattr(p, "placements", None)) for p in params}),
        }
        out = Path(os.environ["PM_DUMP_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        torch.save(probe, out / f"shard-rank{trainer.global_rank}.pt")


class NoiseProbe(Callback):
    """Writes `$PM_DUMP_DIR/noise-rank<N>.pt`: (optimizer step, batch_idx, noise key, t) of every training
    micro-batch, recorded by wrapping the module's `draw_noise`."""

    def __init__(self):
        self.rows: list[tuple[int, int, int, list[float]]] = []
        self.batch_idx = -1

    def on_train_start(self, trainer, pl_module) -> None:
        draw = pl_module.draw_noise

        def recording(x0, step):
            noise, t = draw(x0, step)
            if pl_module.training:
                self.rows.append((trainer.global_step, self.batch_idx, step, t.tolist(), float(noise.std())))
            return noise, t

        pl_module.draw_noise = recording

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_idx = batch_idx

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(os.environ["PM_DUMP_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.rows, out / f"noise-rank{trainer.global_rank}.pt")


class ReplicaProbe(Callback):
    """Writes `$PM_DUMP_DIR/replica-rank<N>.pt`: this rank's local part (a DTensor's shard) of every trainable
    parameter, before the first step and at the end of training, and the keys of the samples it trained on."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.before, self.batch_keys = local_trainable(pl_module), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_keys.extend(batch["key"])

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(os.environ["PM_DUMP_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        after = local_trainable(pl_module)
        torch.save(
            {"before": self.before, "after": after, "keys": self.batch_keys},
            out / f"replica-rank{trainer.global_rank}.pt",
        )


def local_trainable(pl_module) -> dict[str, torch.Tensor]:
    """{name: this rank's local tensor} of the transformer's trainable parameters."""
    from torch.distributed.tensor import DTensor

    params = pl_module.transformer.named_parameters()
    return {n: (p.to_local() if isinstance(p, DTensor) else p).detach().clone() for n, p in params if p.requires_grad}
