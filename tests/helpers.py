"""Shared test helpers: a tiny random Flux transformer and matching forward inputs, a stock FluxPipeline around a
transformer alone, and the bench scripts as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"

TINY_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=2,
    num_single_layers=3,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=24,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)


def tiny_transformer(seed: int = 0, **overrides) -> FluxTransformer2DModel:
    """A random Flux transformer with 2 double and 3 single blocks (fp32, eval mode)."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**{**TINY_TRANSFORMER, **overrides}).eval()


def image_ids(h: int, w: int) -> torch.Tensor:
    """(h*w, 3) Flux image position ids (0, row, col) for an h x w token grid."""
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).float()


def random_inputs(
    model: FluxTransformer2DModel, batch: int = 2, h: int = 3, w: int = 3, txt: int = 5, seed: int = 1
) -> dict:
    """Forward kwargs for `model` with an h x w grid of image tokens and `txt` text tokens."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    inputs = dict(
        hidden_states=torch.randn(batch, h * w, cfg.in_channels, generator=g),  # (B, N, 64)
        encoder_hidden_states=torch.randn(batch, txt, cfg.joint_attention_dim, generator=g),  # (B, T, D)
        pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=g),  # (B, P)
        timestep=torch.rand(batch, generator=g),  # (B,) in [0, 1]
        img_ids=image_ids(h, w),
        txt_ids=torch.zeros(txt, 3),
        return_dict=False,
    )
    if cfg.guidance_embeds:
        inputs["guidance"] = torch.ones(batch)
    return inputs


def bare_pipeline(transformer) -> FluxPipeline:
    """A stock FluxPipeline around `transformer` alone (no VAE / text encoders: LoRA loading needs none)."""
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )


def load_bench(script: str, name: str | None = None):
    """bench/<script> as a module (registered under `name`, as dataclasses look their module up by name); the bench
    folder goes on sys.path, since the scripts import their docs_section helper."""
    name = name or Path(script).stem
    sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
