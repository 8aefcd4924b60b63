"""Known Flux variants in one lookup table: where the weights live and the transformer's shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_FLUX_DIR = REPO_ROOT / "data" / "tiny-flux"

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
    ),
    "tiny": Variant("tiny", str(TINY_FLUX_DIR), None, guidance_embeds=True, resolution=192, max_sequence_length=32),
}


def get_variant(name: str) -> Variant:
    """Look a variant up by name, with the known names in the error."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown Flux variant {name!r}; known: {sorted(VARIANTS)}") from None
