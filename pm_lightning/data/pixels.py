"""Grid pixels cross process boundaries as uint8 and become floats in [-1, 1] on the device that uses them.

DataLoader workers hand over (B, H, W, 3) uint8 batches as PNG decoding leaves them (a quarter of the bytes of
float32 through shared memory and to the GPU, and no transpose in the workers); the DataModule converts them in Lightning's `on_after_batch_transfer` hook, i.e. after the
batch reached its device. Code that reads a loader directly (the latent cache, tests, benchmarks) calls
`float_pixels` itself. The formula is the one the stream used before (p * float32(2/255) - 1, in float32), so
latents cached from the old float path still match bit for bit.
"""

from __future__ import annotations

import torch

SCALE = 2.0 / 255.0  # uint8 0..255 -> 0..2, then - 1


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) contiguous float32 in [-1, 1], on the tensor's own device."""
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise TypeError(f"unit_range: expected (B, H, W, 3) uint8 pixels, got {tuple(pixels.shape)} {pixels.dtype}")
    out = pixels.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)  # (B, 3, H, W)
    return out.mul_(SCALE).sub_(1.0)


def float_pixels(batch: dict) -> dict:
    """A batch dict whose (B, H, W, 3) uint8 `pixels` are replaced by (B, 3, H, W) floats in [-1, 1] (a batch
    already converted: as is)."""
    pixels = batch.get("pixels")
    if pixels is None or pixels.dtype != torch.uint8:
        return batch
    return {**batch, "pixels": unit_range(pixels)}


def float_pixels_of(batch: dict) -> torch.Tensor:
    """A training batch's (B, 3, H, W) float pixels; uint8 ones (a loader read outside a Trainer) are refused."""
    pixels = batch["pixels"]
    if pixels.dtype == torch.uint8:
        raise TypeError(
            "batch['pixels'] is uint8: ProcessDataModule's on_after_batch_transfer converts it to [-1, 1] inside a "
            "Trainer; a loader read directly needs pm_lightning.data.pixels.float_pixels(batch) first"
        )
    return pixels
