"""Stage-1 sampling through diffusers' FluxPipeline, with per-sample domain routing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import FluxPipeline
from PIL import Image

from pm_lightning.models.adapter_routing import use_domains


@torch.no_grad()
def generate_grids(
    pipe: FluxPipeline,
    prompts: Sequence[str],
    domains: torch.Tensor,
    resolution: int,
    num_inference_steps: int = 20,
    guidance: float = 1.0,
    seed: int = 0,
    max_sequence_length: int | None = None,
    embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[Image.Image]:
    """One grid image per prompt; sample i uses domain `domains[i]` and the generator seed + i. `embeds`:
    precomputed (prompt_embeds (B, T, D), pooled (B, P)) of the prompts, for a pipeline without text encoders."""
    device = pipe.transformer.device
    generators = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(len(prompts))]
    kwargs = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    if embeds is None:
        kwargs["prompt"] = list(prompts)
    else:
        kwargs.update(prompt_embeds=embeds[0], pooled_prompt_embeds=embeds[1])
    with use_domains(pipe.transformer, domains.to(device)):
        out = pipe(
            height=resolution,
            width=resolution,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance,
            generator=generators,
            **kwargs,
        )
    return out.images
