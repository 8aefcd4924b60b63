"""Dtypes by name, decided here only: the one table, the name written into ids and reports, and the default.

`DTYPES` holds the canonical names (configs, cache ids, reports); `DTYPE_NAMES` adds the short aliases the
inference commands' `--dtype` also accepts, each mapped to its canonical name. The table is names only, so the
commands read it for their `--dtype` choices before torch loads (`core/validate.py`); `torch_dtype` turns a name
into the torch dtype. `default_dtype` is the one default rule: float32 where a model runs on the CPU, bfloat16 on
an accelerator. Inference applies it to the device it runs on (`inference/runtime.py`); the text and latent caches
apply it to the device the base's training runs use (`Variant.trains_on`: the tiny base on the CPU, 32-true; every
other base on GPUs, bf16-mixed), since the run that reads a cache keys it by the dtype it trains in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_NAMES = {**{name: name for name in DTYPES}, **ALIASES}


def torch_dtype(name: str) -> torch.dtype:
    """ "bf16" -> torch.bfloat16 (any name of `DTYPE_NAMES`)."""
    # inside: the commands read the names above before torch loads (5 s; docs/ARCHITECTURE.md, "Start-up")
    import torch

    return getattr(torch, DTYPE_NAMES[name])


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the canonical name)."""
    return str(dtype).removeprefix("torch.")


def default_dtype(device_type: str) -> str:
    """The dtype name used when none is given: float32 on the CPU, bfloat16 on an accelerator."""
    return "float32" if device_type == "cpu" else "bfloat16"
