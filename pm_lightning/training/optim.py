"""Optimizers (CAME by default, AdamW as an option) and learning-rate schedules."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from came_pytorch import CAME
from torch.distributed.tensor import DTensor, Replicate

from pm_lightning.core.validate import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat
from pm_lightning.training.came_grouped import GroupedCAME
from pm_lightning.training.came_sharded import ShardedGroupedCAME, can_group

OPTIMIZERS = ("came", "adamw")
IMPLEMENTATIONS = ("grouped", "reference")
log = logging.getLogger(__name__)
SCHEDULES = ("constant", "warmup_constant", "warmup_cosine")


@dataclass
class OptimizerConfig:
    """Optimizer and schedule.

    Attributes:
        name: "came" (came-pytorch; ProcessMaker default) or "adamw".
        lr: peak learning rate.
        betas: CAME uses three (beta1, beta2, beta3); AdamW the first two.
        eps: CAME's two epsilons; AdamW uses the first if it is >= 1e-12, else 1e-8.
        weight_decay: decoupled weight decay.
        schedule: "constant", "warmup_constant" or "warmup_cosine".
        warmup_steps: linear warm-up length in optimizer steps.
        total_steps: length of the cosine decay (warmup_cosine only).
        implementation: "grouped" (default) steps all tensors of a shape at once: CAME batched over same-shape
            stacks (`training/came_grouped.py`; under FSDP2 on the local shards, the cross-rank sums batched:
            `training/came_sharded.py`; DTensors it cannot take step per tensor, logged), AdamW with torch's fused
            kernel on CUDA and its foreach kernels elsewhere (DTensors too); "reference" is came-pytorch's
            per-tensor loop (`ShardedCAME` for DTensors) and AdamW's per-tensor loop (foreach=False). Same maths,
            equal within float rounding.
    """

    name: Literal["came", "adamw"] = "came"
    lr: PositiveFloat = 1e-4
    betas: tuple[Fraction, Fraction, Fraction] = (0.9, 0.999, 0.9999)
    eps: tuple[PositiveFloat, PositiveFloat] = (1e-30, 1e-16)
    weight_decay: NonNegativeFloat = 0.0
    schedule: Literal["constant", "warmup_constant", "warmup_cosine"] = "constant"
    warmup_steps: NonNegativeInt = 0
    total_steps: NonNegativeInt = 0
    implementation: Literal["grouped", "reference"] = "grouped"

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"optimizer.implementation must be one of {IMPLEMENTATIONS}, got {self.implementation!r}")
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule == "warmup_cosine" and self.total_steps <= self.warmup_steps:
            raise ValueError("optimizer.total_steps must exceed optimizer.warmup_steps for warmup_cosine")
        self.betas, self.eps = tuple(self.betas), tuple(self.eps)


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The configured optimizer over `params`."""
    params = list(params)
    grouped = cfg.implementation == "grouped"
    if cfg.name == "came":
        cls = sharding_aware_came()
        if grouped and not any(_is_dtensor(p) for p in params):
            cls = GroupedCAME
        elif grouped and can_group(params):
            cls = ShardedGroupedCAME
        elif grouped:
            log.info("optimizer.implementation grouped: these DTensor parameters step with the per-tensor CAME")
        return cls(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    adam_eps = cfg.eps[0] if cfg.eps[0] >= 1e-12 else 1e-8
    fused = grouped and bool(params) and all(p.device.type == "cuda" for p in params)
    kernels = {"fused": True} if fused else {"foreach": grouped}
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=cfg.betas[:2], eps=adam_eps, weight_decay=cfg.weight_decay, **kernels
    )


def lr_factor(step: int, cfg: OptimizerConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step `step`."""
    if cfg.schedule == "constant":
        return 1.0
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "warmup_constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / (cfg.total_steps - cfg.warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR implementing `cfg.schedule`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


class ShardedCAME(CAME):
    """CAME whose state is built from the gradient's own DTensor ops for FSDP2 parameters (`sharding_aware_came`)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not self.state[p] and _is_dtensor(p.grad):
                    self.state[p].update(_dtensor_came_state(p.grad.float(), self._get_options(p.grad.shape)))
        return super().step(closure)


def sharding_aware_came() -> type[torch.optim.Optimizer]:
    """came-pytorch's CAME, whose state also works for FSDP2's DTensor parameters.

    CAME keeps factored second moments (row and column means of the squared gradient). Its own state
    initialisation builds them as plain tensors, which cannot mix with DTensor gradients. Here they are built from
    the gradient's own DTensor ops instead: row statistics sharded like the rows (FSDP2 shards dim 0), column
    statistics replicated (a mean over the sharded dim is reduced across ranks). Every later CAME operation then
    runs on DTensors and equals the unsharded step (tests/test_fsdp2.py compares against DDP).
    """
    return ShardedCAME


def _is_dtensor(t: torch.Tensor) -> bool:
    return isinstance(t, DTensor)


def _dtensor_came_state(grad: torch.Tensor, factored: bool) -> dict:
    """CAME's initial state for a DTensor gradient, with DTensor statistics (see `sharding_aware_came`)."""
    state = {"step": 0, "RMS": 0, "exp_avg": torch.zeros_like(grad)}
    if not factored:
        state["exp_avg_sq"] = torch.zeros_like(grad)
        return state
    row = torch.zeros_like(grad.mean(dim=-1))  # sharded like grad's rows
    col = grad.mean(dim=-2)
    col = torch.zeros_like(col.redistribute(col.device_mesh, [Replicate()] * col.device_mesh.ndim))
    state.update(exp_avg_sq_row=row, exp_avg_sq_col=col, exp_avg_res_row=row.clone(), exp_avg_res_col=col.clone())
    return state
