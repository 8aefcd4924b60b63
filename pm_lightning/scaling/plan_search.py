"""The plan: every strategy's per-GPU total on a card, every (text cache, quantization, strategy) option, and the
configuration recommended for the card (`scaling/memory_formulas.py` has the formulas)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pm_lightning.scaling.memory_formulas import (
    QUANT_BYTES,
    QUANT_STRATEGIES,
    STRATEGIES,
    GiB,
    Workload,
    components,
)
from pm_lightning.scaling.model_shapes import ModelShape


@dataclass(frozen=True)
class Plan:
    strategy: str
    gpus: int
    gpu_gib: float
    components: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_gib * GiB


def plan_all(shape: ModelShape, work: Workload, gpus: int = 8, gpu_gib: float = 48) -> list[Plan]:
    """One Plan per strategy in STRATEGIES."""
    return [Plan(name, gpus, gpu_gib, components(shape, work, s, gpus)) for name, s in STRATEGIES.items()]


SPEED_ORDER = ("ddp", "fsdp_shard_grad_op", "fsdp_full_shard")
"""Fastest first: DDP communicates least; FSDP2 with resharding gathers every unit twice per step."""


def options(shape: ModelShape, work: Workload, gpus: int, gpu_gib: float) -> list[dict]:
    """Every (text cache, quantization, strategy) of `work` with its total per GPU and whether it fits."""
    out = []
    for text_encoders in (False, True):
        for quant in QUANT_BYTES:
            w = replace(work, text_encoders=text_encoders, quant=quant)
            for plan in plan_all(shape, w, gpus, gpu_gib):
                if quant != "none" and plan.strategy not in QUANT_STRATEGIES:
                    continue  # not a configuration that runs
                out.append(
                    {"strategy": plan.strategy, "quant": quant, "text_cache": not text_encoders}
                    | {"total": plan.total, "fits": plan.fits}
                )
    return out


def recommend(shape: ModelShape, work: Workload, gpus: int, gpu_gib: float) -> dict | None:
    """The configuration to use on this card: text cache on, the least quantization that fits, then the fastest
    strategy that fits; None when nothing does (fewer tokens, a smaller adapter or more GPUs)."""
    fitting = [o for o in options(shape, work, gpus, gpu_gib) if o["fits"] and o["text_cache"]]
    quant_rank = list(QUANT_BYTES)
    fitting.sort(key=lambda o: (quant_rank.index(o["quant"]), SPEED_ORDER.index(o["strategy"])))
    return fitting[0] if fitting else None
