"""Where and in what precision inference runs, decided here only: device, dtype, memory savers.

`generate`, `adapt`, `evaluate` and the web demo take `--device` (default cuda when available, else cpu) and
`--dtype` (default bfloat16 on a GPU, float32 on the CPU; the flags and the sampler defaults, the variant's own
steps and guidance, are in `inference/flags.py`, light enough to refuse a bad flag before torch loads); `--vae-tiling` decodes
large grids tile by tile and `--cpu-offload` keeps each component on the CPU until it runs (diffusers'
`enable_vae_tiling` / `enable_model_cpu_offload`), for cards smaller than the whole pipeline.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from pm_lightning.core.dtypes import DTYPE_NAMES, default_dtype, dtype_name, torch_dtype
from pm_lightning.core.errors import BadInput
from pm_lightning.models.variants import find_variant


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Runtime:
    """Device and weight dtype of the inference models, and the two memory savers of the Flux pipeline."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    vae_tiling: bool = False
    cpu_offload: bool = False

    @classmethod
    def resolve(
        cls, device: str | None = None, dtype: str | None = None, vae_tiling: bool = False, cpu_offload: bool = False
    ) -> Runtime:
        """None -> the defaults (cuda if available else cpu; bfloat16 off the CPU, float32 on it); bad names -> BadInput."""
        device = device or default_device()
        try:
            dev = torch.device(device)
        except RuntimeError as err:
            raise BadInput(f"--device {device!r} is not a torch device ({err})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BadInput(f"--device {device}: no CUDA device here (use --device cpu)")
        dtype = dtype or default_dtype(dev.type)
        if dtype not in DTYPE_NAMES:
            raise BadInput(f"--dtype {dtype!r}: choose from {sorted(DTYPE_NAMES)}")
        if cpu_offload and dev.type == "cpu":
            raise BadInput("--cpu-offload moves each model to the GPU when it runs: it needs --device cuda[:N]")
        return cls(str(dev), torch_dtype(dtype), bool(vae_tiling), bool(cpu_offload))

    @classmethod
    def for_cache(cls, device: str | None, dtype: str | None, base: str) -> Runtime:
        """Where a text or latent cache of `base` is computed, in the dtype its training runs key it by: `dtype`, else
        the default for the device they train on (`Variant.trains_on`; a base that is no variant: a GPU run)."""
        variant = find_variant(base)
        return cls.resolve(device, dtype or default_dtype(variant.trains_on if variant else "cuda"))

    def describe(self) -> dict:
        """What report.json records."""
        return {
            "device": self.device,
            "dtype": dtype_name(self.dtype),
            "vae_tiling": self.vae_tiling,
            "cpu_offload": self.cpu_offload,
        }

    def place(self, backbone) -> None:
        """Put a freshly loaded backbone where it runs: on the device, or CPU-offloaded; VAE tiling on when asked."""
        pipe = backbone.pipeline()
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        if self.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            backbone.to(self.device)


def runtime_from_args(args: argparse.Namespace) -> Runtime:
    return Runtime.resolve(
        getattr(args, "device", None),
        getattr(args, "dtype", None),
        getattr(args, "vae_tiling", False),
        getattr(args, "cpu_offload", False),
    )
