"""Dtypes by name, decided here only: the one table, the name written into ids and reports, and the default.

`DTYPES` holds the canonical names (configs, cache ids, reports); `DTYPE_NAMES` adds the short aliases the
inference commands' `--dtype` also accepts. `default_dtype` is the one default rule: float32 where a model runs
on the CPU, bfloat16 on an accelerator. Inference applies it to the device it runs on (`inference/runtime.py`);
the text and latent caches apply it to the device the base's training runs use (`Variant.trains_on`: the tiny
base on the CPU, 32-true; every other base on GPUs, bf16-mixed), since the run that reads a cache keys it by
the dtype it trains in.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_NAMES = {**DTYPES, **{alias: DTYPES[name] for alias, name in ALIASES.items()}}


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the canonical name)."""
    return str(dtype).removeprefix("torch.")


def default_dtype(device_type: str) -> str:
    """The dtype name used when none is given: float32 on the CPU, bfloat16 on an accelerator."""
    return "float32" if device_type == "cpu" else "bfloat16"
