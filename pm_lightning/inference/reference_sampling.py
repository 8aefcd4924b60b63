"""Sampling with clean reference cells (stage 2 insertion, ReCraft) through diffusers' stock FluxPipeline.

The reference frames are VAE-encoded one by one (as in training), the start latents hold them
clean in their cells and noise elsewhere, and `callback_on_step_end` writes them back after every
scheduler step, so each transformer call sees the references exactly as training did. The final
latent grid is cut into cells and each cell is decoded on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from pm_lightning.core.progress import pipeline_config
from pm_lightning.data.grid import layout_for, tensor_frames_to_grid, tensor_grid_to_frames
from pm_lightning.data.reference_cells import (
    DUAL_LAYOUT,
    DUAL_REFERENCES,
    cell_token_mask,
    check_cell,
    with_clean_references,
)
from pm_lightning.models.adapter_routing import use_domains
from pm_lightning.models.backbone import image_ids, pack, unpack
from pm_lightning.models.variants import VARIANTS


def to_tensor(image: Image.Image, cell: int) -> torch.Tensor:
    """PIL image -> (3, cell, cell) float in [-1, 1] (bicubic resize)."""
    image = image.convert("RGB")
    if image.size != (cell, cell):
        image = image.resize((cell, cell), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [-1, 1] -> PIL RGB (round to nearest, as diffusers' image processor)."""
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())


@torch.no_grad()
def reference_latents(
    backbone, references: dict[int, Image.Image], rows: int, cols: int, cell: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, N, 64) packed latents holding VAE(frame) in each reference cell (zeros elsewhere) and the (N,) mask."""
    n = rows * cols
    bad = sorted(k for k in references if not 0 <= k < n)
    if bad or not references:
        raise ValueError(
            f"reference positions must be a non-empty subset of 0..{n - 1} for a {rows}x{cols} grid, got {sorted(references)}"
        )
    frames = torch.stack([to_tensor(references[k], cell) for k in sorted(references)])  # (k, 3, cell, cell)
    encoded = backbone.encode_images(frames.to(backbone.device, backbone.dtype))  # (k, C, c/f, c/f), f the VAE factor
    latents = encoded.new_zeros(n, *encoded.shape[1:])  # (n, C, c/f, c/f)
    latents[sorted(references)] = encoded
    grid = tensor_frames_to_grid(latents, rows, cols)[None]  # (1, C, h, w)
    ids = image_ids(*grid.shape[-2:], device=grid.device)  # (N, 3)
    return pack(grid), cell_token_mask(ids, rows, cols, list(references))


@torch.no_grad()
def sample_reference_latents(
    backbone,
    prompts: Sequence[str],
    references: Sequence[dict[int, Image.Image]],
    rows: int,
    cols: int,
    cell: int,
    num_inference_steps: int = 20,
    guidance: float = 1.0,
    seeds: Sequence[int] = (0,),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sampler call for a batch of grids: the final packed latents (B, N, 64), the clean reference latents
    (B, N, 64) and the (B, N) reference masks.

    Item i has its own prompt, reference frames and noise (a CPU generator seeded with `seeds[i]`), so an item's
    result does not depend on what else is in the batch (up to floating-point reduction order).
    """
    check_cell(cell)
    if not len(prompts) == len(references) == len(seeds) > 0:
        raise ValueError(
            f"one prompt, reference dict and seed per grid, got {len(prompts)}, {len(references)}, {len(seeds)}"
        )
    refs = [reference_latents(backbone, r, rows, cols, cell) for r in references]
    x_ref = torch.cat([x for x, _ in refs])  # (B, N, 64)
    keep = torch.stack([m for _, m in refs]).to(x_ref.device)  # (B, N)
    f = backbone.vae_scale_factor  # 8 for Flux; a tiny VAE may downsample less
    h, w = rows * cell // f, cols * cell // f
    noise = torch.cat(
        [
            pack(torch.randn((1, backbone.latent_channels, h, w), generator=torch.Generator("cpu").manual_seed(s)))
            for s in seeds
        ]
    )  # (B, N, 64)
    start = with_clean_references(noise.to(x_ref), x_ref, keep)

    def write_back(pipe, step, timestep, kwargs):
        latents = kwargs["latents"]  # a cached transformer step still passes through here: the write-back never skips
        return {"latents": with_clean_references(latents, x_ref.to(latents), keep.to(latents.device))}

    pipe = backbone.pipeline()
    pipe.set_progress_bar_config(**pipeline_config("stage-2 insertions"))  # the sampler's steps; off: --no-progress
    with use_domains(backbone.transformer, None):
        out = pipe(
            prompt=list(prompts),
            height=rows * cell,
            width=cols * cell,
            latents=start,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance,
            max_sequence_length=backbone.max_sequence_length,
            callback_on_step_end=write_back,
            output_type="latent",
        )
    return out.images, x_ref, keep


def decode_cells(backbone, latents: torch.Tensor, rows: int, cols: int, cell: int) -> list[list[Image.Image]]:
    """(B, N, 64) packed latent grids -> per grid, its rows * cols frames in temporal order.

    Each cell is decoded on its own (as each frame is encoded on its own), so a reference frame comes back as
    exactly vae-decode(vae-encode(frame)): the VAE's GroupNorm and mid-block attention never mix cells.
    """
    out = []
    f = backbone.vae_scale_factor
    for grid in unpack(latents, rows * cell // f, cols * cell // f):  # (C, h, w) each
        cells = tensor_grid_to_frames(grid, rows, cols)  # (n, C, c/f, c/f) in temporal order
        out.append([to_pil(f) for f in backbone.decode_latents(cells)])
    return out


@torch.no_grad()
def sample_with_references(
    backbone,
    prompt: str,
    references: dict[int, Image.Image],
    rows: int,
    cols: int,
    cell: int,
    num_inference_steps: int = 20,
    guidance: float = 1.0,
    seed: int = 0,
) -> list[Image.Image]:
    """Every frame of a rows x cols serpentine grid, in temporal order, given clean frames at some positions.

    Args:
        backbone: a FluxBackbone (stage-1 fused, stage-2 LoRA loaded or fused).
        prompt: the sequence caption.
        references: {serpentine position: frame}; each is resized to `cell` px and kept clean.
        rows, cols: the grid layout (dual reference: 2x2 with positions 0 and 3; ReCraft: the last position).
        cell: frame size in px (multiple of 16).
        num_inference_steps, guidance, seed: sampler settings (noise from a CPU generator).

    Returns:
        rows * cols PIL frames of `cell` px, reference positions included (see `decode_cells`).
    """
    latents, _, _ = sample_reference_latents(
        backbone, [prompt], [references], rows, cols, cell, num_inference_steps, guidance, [seed]
    )
    return decode_cells(backbone, latents, rows, cols, cell)[0]


def _middle(frames: list[Image.Image], n: int) -> list[Image.Image]:
    """The n (1 or 2) new frames of a sampled dual-reference grid.

    n = 2: the two middle cells (top right, bottom right) in temporal order. n = 1: of those two, the
    one whose pixel distances to a and b are most balanced (min |d(x, a) - d(x, b)|, the nearest to the
    midpoint of the pair); the layout is always the trained 2x2, never a layout the model has not seen.
    """
    middle = frames[DUAL_REFERENCES[0] + 1 : DUAL_REFERENCES[1]]
    if n == 2:
        return middle
    a, b = (np.asarray(frames[k], dtype=np.float32) for k in DUAL_REFERENCES)
    imbalance = [
        abs(np.abs(np.asarray(x, np.float32) - a).mean() - np.abs(np.asarray(x, np.float32) - b).mean()) for x in middle
    ]
    return [middle[int(np.argmin(imbalance))]]


def insert_between_batch(
    backbone,
    requests: Sequence[tuple[Image.Image, Image.Image, int]],
    prompt: str,
    seeds: Sequence[int],
    cell: int = 64,
    num_inference_steps: int = 20,
    guidance: float = 1.0,
    max_batch: int = 8,
) -> list[list[Image.Image]]:
    """Every insertion of `requests` [(frame_a, frame_b, n), ...] in sampler calls of at most `max_batch` grids.

    Request i uses `seeds[i]`; its frames equal `insert_between(..., seed=seeds[i])` (tests/test_stage2.py).
    """
    if any(n not in (1, 2) for _, _, n in requests):
        raise ValueError(f"n must be 1 or 2, got {[n for _, _, n in requests]}")
    if len(seeds) != len(requests) or max_batch < 1:
        raise ValueError(f"one seed per request and max_batch >= 1, got {len(seeds)} seeds, max_batch {max_batch}")
    out: list[list[Image.Image]] = []
    for lo in range(0, len(requests), max_batch):
        chunk, chunk_seeds = requests[lo : lo + max_batch], seeds[lo : lo + max_batch]
        refs = [dict(zip(DUAL_REFERENCES, (a, b))) for a, b, _ in chunk]
        latents, _, _ = sample_reference_latents(
            backbone, [prompt] * len(chunk), refs, *DUAL_LAYOUT, cell, num_inference_steps, guidance, chunk_seeds
        )
        grids = decode_cells(backbone, latents, *DUAL_LAYOUT, cell)
        out += [_middle(frames, n) for frames, (_, _, n) in zip(grids, chunk)]
    return out


def insert_between(
    backbone,
    frame_a: Image.Image,
    frame_b: Image.Image,
    prompt: str,
    n: int = 2,
    cell: int = 64,
    num_inference_steps: int = 20,
    guidance: float = 1.0,
    seed: int = 0,
) -> list[Image.Image]:
    """The `n` (1 or 2) new frames between `frame_a` and `frame_b` (dual reference, 2x2 layout; see `_middle`)."""
    return insert_between_batch(backbone, [(frame_a, frame_b, n)], prompt, [seed], cell, num_inference_steps, guidance)[
        0
    ]


def default_cell(backbone, rows: int, cols: int) -> int:
    """The cell of the variant's training grids (resolution / rows, down to a multiple of 16); 1024-px grids otherwise."""
    variant = VARIANTS.get(getattr(backbone, "source", ""))
    resolution = variant.resolution if variant is not None and variant.resolution else 1024
    return max(16, resolution // max(rows, cols) // 16 * 16)


def recraft(
    backbone,
    image: Image.Image,
    prompt: str,
    frames: int = 9,
    cell: int | None = None,
    num_inference_steps: int = 20,
    guidance: float = 1.0,
    seed: int = 0,
) -> list[Image.Image]:
    """ReCraft: the whole process ending in `image` (9 -> 3x3, 4 -> 2x2), the finished image in the last cell.

    The finished image sits in the last serpentine cell (3x3: bottom right; 2x2: bottom left), the
    same cell as in training. `cell` defaults to the training grid's (variant resolution / rows).
    Returns `frames` PIL frames in temporal order; the last is the decoded finished image.
    """
    rows, cols = layout_for(frames)
    cell = cell or default_cell(backbone, rows, cols)
    return sample_with_references(
        backbone, prompt, {rows * cols - 1: image}, rows, cols, cell, num_inference_steps, guidance, seed
    )
