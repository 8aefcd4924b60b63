"""Known Flux variants in one lookup table: where the weights live and the transformer's shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pm_lightning.core.paths import tiny_flux_dir

EMBEDDED = "embedded:tiny-flux"  # the source of the "tiny" variant: `core.paths.tiny_flux_dir()`, resolved when used

_FLUX_12B = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    axes_dims_rope=(16, 56, 56),
)

TINY_FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    pooled_projection_dim=64,
    guidance_embeds=True,
    axes_dims_rope=(8, 12, 12),
)
"""The embedded tiny Flux's transformer (data/tiny-flux/transformer/config.json, built by `tiny/flux_components.py`):
2 double + 4 single blocks, width 4 x 32 = 128. Also the small model of the tests and of the CPU benchmarks."""


@dataclass(frozen=True)
class Variant:
    """One Flux variant: a hub id or local directory, and its transformer config (None = read from disk)."""

    name: str
    source: str
    transformer_config: dict | None = None
    guidance_embeds: bool = True
    resolution: int = 1024
    max_sequence_length: int = 512
    align_layers: tuple[int, ...] = field(default=())
    num_inference_steps: int = 28  # sampler defaults (generate / adapt without --num-inference-steps / --guidance)
    guidance_scale: float = 3.5
    trains_on: str = (
        "cuda"  # the device type its training runs use: the caches' default dtype follows it (core/dtypes.py)
    )

    def location(self) -> str:
        """Hub id or local directory of the weights (the embedded tiny Flux is looked up in the project home)."""
        return str(tiny_flux_dir()) if self.source == EMBEDDED else self.source


VARIANTS: dict[str, Variant] = {
    "flux-dev": Variant(
        "flux-dev",
        "black-forest-labs/FLUX.1-dev",
        dict(_FLUX_12B, guidance_embeds=True),
        guidance_embeds=True,
        align_layers=(4, 9, 14, 19, 29),
    ),
    "flux-schnell": Variant(
        "flux-schnell",
        "black-forest-labs/FLUX.1-schnell",
        dict(_FLUX_12B, guidance_embeds=False),
        guidance_embeds=False,
        max_sequence_length=256,
        align_layers=(4, 9, 14, 19, 29),
        num_inference_steps=4,  # timestep-distilled: 4 steps, no guidance (its model card)
        guidance_scale=0.0,
    ),
    "tiny": Variant(
        "tiny",
        EMBEDDED,
        None,
        guidance_embeds=True,
        resolution=192,
        max_sequence_length=32,
        num_inference_steps=20,
        guidance_scale=1.0,
        trains_on="cpu",  # experiments/tiny*.yaml: CPU, 32-true
    ),
}

# FluxPipeline.__call__'s own defaults, for a base that is no known variant (a local directory or another hub id)
PIPELINE_SAMPLER = (28, 3.5)


def get_variant(name: str) -> Variant:
    """Look a variant up by name, with the known names in the error."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown Flux variant {name!r}; known: {sorted(VARIANTS)}") from None


def find_variant(base: str) -> Variant | None:
    """The variant a `--base` names: its name, its hub id, or the directory it lives in; None for anything else."""
    if base in VARIANTS:
        return VARIANTS[base]
    for v in VARIANTS.values():
        if base == v.source:
            return v
    target = Path(base).expanduser()
    if not target.exists():
        return None
    return next((v for v in VARIANTS.values() if Path(v.location()).resolve() == target.resolve()), None)


def sampler_defaults(variant: Variant | None) -> tuple[int, float]:
    """(num_inference_steps, guidance) of a variant; FluxPipeline's defaults for an unknown base."""
    return (variant.num_inference_steps, variant.guidance_scale) if variant is not None else PIPELINE_SAMPLER
