"""uint8 batches from the workers, [-1, 1] floats on the device (`data/pixels.py`): the conversion equals the old
float path bit for bit, for every byte value and for the DataModule's batches, through the hook the Trainer calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.pixels import float_pixels, float_pixels_of, unit_range
from pm_lightning.models.vae_latents import to_unit_range
from tests.conftest import TRAIN_DOMAINS


def old_float_path(pixels_hwc: np.ndarray) -> torch.Tensor:
    """The stream's conversion before uint8 batches (removed from data/stream.py): (B, H, W, 3) uint8 -> (B, 3, H, W)
    float32, p * float32(2/255) then -= 1, in numpy."""
    out = np.empty((pixels_hwc.shape[0], 3, *pixels_hwc.shape[1:3]), dtype=np.float32)
    np.multiply(pixels_hwc.transpose(0, 3, 1, 2), np.float32(2.0 / 255.0), out=out)
    out -= 1.0
    return torch.from_numpy(out)


def test_every_byte_value_converts_exactly_as_before():
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)  # (1, 16, 16, 3)
    new = unit_range(torch.from_numpy(values))  # (1, 3, 16, 16): channels first and contiguous
    assert new.is_contiguous() and new.dtype == torch.float32
    assert torch.equal(new, old_float_path(values))
    assert new.min() == -1 and new.max() == 1
    assert torch.equal(to_unit_range(list(values)), new)  # the latent cache converts the same way


def test_datamodule_batches_reach_the_module_as_the_old_floats(tiny_shards):
    """Through `on_after_batch_transfer` (what Lightning calls after moving the batch to the device)."""
    dm = ProcessDataModule(tiny_shards["train"], domains=TRAIN_DOMAINS, resolution=96, batch_size=4, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixels"].dtype == torch.uint8  # 1 byte per value crosses process boundaries and goes to the GPU
    moved = dm.on_after_batch_transfer(batch, 0)
    expected = old_float_path(batch["pixels"].numpy())  # (4, 3, 96, 96)
    assert torch.equal(moved["pixels"], expected) and float_pixels_of(moved) is moved["pixels"]
    assert moved["key"] == batch["key"] and torch.equal(moved["valid"], batch["valid"])  # the rest untouched
    assert float_pixels(moved) is moved  # a converted batch passes as is
    with pytest.raises(TypeError, match="float_pixels"):  # a model fed raw loader batches says how to fix it
        float_pixels_of(batch)
