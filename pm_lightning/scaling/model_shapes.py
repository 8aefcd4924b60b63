"""What the memory plan knows about a transformer with adapters: parameter counts and shapes, from the real model
built on the ``meta`` device with the real ``add_adapters`` (so they agree with ``pm_lightning.params``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapters import adapter_parameters, add_adapters
from pm_lightning.models.backbone import meta_transformer
from pm_lightning.models.variants import get_variant
from pm_lightning.models.weights import resolve_source

FLUX_TEXT_ENCODER_PARAMS = 4_762_310_656 + 123_060_480
"""T5 v1.1 XXL encoder + CLIP ViT-L/14 text model (FLUX.1-dev / schnell's text_encoder_2 and text_encoder)."""
FLUX_VAE_PARAMS = 83_819_683
"""FLUX.1's AutoencoderKL (16 latent channels)."""


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a transformer with adapters."""

    base_params: int
    """Frozen parameters (the whole base transformer)."""
    adapter_shapes: tuple[tuple[int, ...], ...]
    """Shape of every trainable parameter, each tied parameter once."""
    units: tuple[tuple[int, int], ...]
    """(frozen, trainable) parameters of each FSDP unit: the double- then single-stream blocks."""
    hidden: int
    """Hidden width D."""
    linear_params: int = 0
    """Frozen Linear weights: what a quantized base stores in fp8 / NF4."""
    text_encoder_params: int = 0
    """T5 + CLIP text encoders (on the GPU unless the text cache replaces them)."""
    vae_params: int = 0

    @property
    def adapter_params(self) -> int:
        return sum(math.prod(s) for s in self.adapter_shapes)

    @property
    def root_params(self) -> int:
        """Parameters outside the blocks (embedders, final norm and projection): FSDP's root unit."""
        return self.base_params + self.adapter_params - sum(f + t for f, t in self.units)

    @property
    def num_blocks(self) -> int:
        return len(self.units)

    @property
    def largest_unit(self) -> int:
        return max(f + t for f, t in self.units)


def shape_of(transformer: torch.nn.Module) -> ModelShape:
    """The ModelShape of a Flux transformer with adapters (real or meta device)."""
    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    units = tuple(
        (
            sum(p.numel() for p in b.parameters() if not p.requires_grad),
            sum(p.numel() for p in b.parameters() if p.requires_grad),
        )
        for b in blocks
    )
    cfg = transformer.config
    return ModelShape(
        base_params=sum(p.numel() for p in transformer.parameters() if not p.requires_grad),
        adapter_shapes=tuple(tuple(p.shape) for p in adapter_parameters(transformer)),
        units=units,
        hidden=cfg.num_attention_heads * cfg.attention_head_dim,
        linear_params=sum(
            m.weight.numel()
            for m in transformer.modules()
            if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad
        ),
    )


def model_shape(variant: str, adapter: AdapterConfig) -> ModelShape:
    """Build `variant` on the meta device, add `adapter`, and read its shape (seconds, no memory); FLUX.1's text
    encoders and VAE are known counts, the tiny ones are counted from their configs on the meta device."""

    with torch.device("meta"):
        transformer = meta_transformer(variant)
        add_adapters(transformer, adapter)
    shape = shape_of(transformer)
    if variant in ("flux-dev", "flux-schnell"):
        return replace(shape, text_encoder_params=FLUX_TEXT_ENCODER_PARAMS, vae_params=FLUX_VAE_PARAMS)
    return replace(shape, **_counted_from_configs(variant))


def _counted_from_configs(variant: str) -> dict[str, int]:
    """Text encoder and VAE parameters of a local pipeline, built on the meta device from its configs."""
    # lazy: diffusers + transformers, 16 s before memory_plan reads its flags (docs/ARCHITECTURE.md, "Start-up")
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    root = resolve_source(get_variant(variant).location())
    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig.from_pretrained(root, subfolder="text_encoder"))
        t5 = T5EncoderModel(T5Config.from_pretrained(root, subfolder="text_encoder_2"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"text_encoder_params": count(clip) + count(t5), "vae_params": count(vae)}
