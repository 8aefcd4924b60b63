"""The dtype of the frozen base, decided here only: from the trainer's precision and strategy, or set explicitly."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy

from pm_lightning.core.dtypes import DTYPES, torch_dtype


def parse_dtype(name: str) -> torch.dtype:
    """ "float32" / "bfloat16" / "float16" -> torch dtype, with the choices in the error."""
    if name not in DTYPES:
        raise ValueError(f"model.init_args.dtype must be one of {sorted(DTYPES)} or null (derived), got {name!r}")
    return torch_dtype(name)


def base_dtype(precision: str | int | None, strategy: object | None = None, explicit: str | None = None) -> torch.dtype:
    """The frozen base's weight dtype; the adapters always train in fp32.

    explicit (model.init_args.dtype) wins. Otherwise: Lightning's FSDPStrategy (FSDP1, no longer shipped in a
    config) flattens each unit into one tensor of a single dtype, and a unit holds fp32 adapters, so the base is fp32
    there. FSDP2 (`FluxFSDP2Strategy`, experiments/strategies/fsdp.yaml) shards each parameter on its own, so it
    follows the trainer's precision like DDP: "bf16-*" -> bfloat16, "16-*" -> float16, anything else
    ("32-true", "64-true", None) -> float32.
    """
    if explicit is not None:
        return parse_dtype(explicit)
    if strategy is not None and _is_fsdp1(strategy):
        return torch.float32
    name = str(precision or "32-true")
    if name.startswith("bf16"):
        return torch.bfloat16
    if name.startswith("16"):
        return torch.float16
    return torch.float32


def _is_fsdp1(strategy: object) -> bool:
    return isinstance(strategy, FSDPStrategy)
