"""Serpentine grids: exact round trips, the neighbour property, PIL/tensor agreement, layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pm_lightning.data.grid import (
    frame_index,
    frames_to_grid,
    grid_to_frames,
    layout_for,
    serpentine_cells,
    tensor_frames_to_grid,
    tensor_grid_to_frames,
)

LAYOUTS = [(r, c) for r in range(1, 6) for c in range(1, 6)]


def random_frames(n: int, h: int = 4, w: int = 6, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8 frames, each distinct."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("rows,cols", LAYOUTS)
def test_pil_round_trip_is_exact(rows, cols):
    frames = random_frames(rows * cols)
    grid = frames_to_grid([Image.fromarray(f) for f in frames], rows, cols)
    assert grid.size == (cols * 6, rows * 4)
    back = np.stack([np.asarray(f) for f in grid_to_frames(grid, rows, cols)])
    np.testing.assert_array_equal(back, frames)


@pytest.mark.parametrize("rows,cols", LAYOUTS)
def test_tensor_round_trip_is_exact_and_matches_pil(rows, cols):
    frames = random_frames(rows * cols)
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W)
    grid = tensor_frames_to_grid(tensor, rows, cols)  # (3, R*H, C*W)
    assert torch.equal(tensor_grid_to_frames(grid, rows, cols), tensor)
    pil_grid = np.array(frames_to_grid([Image.fromarray(f) for f in frames], rows, cols))
    expected = torch.from_numpy(pil_grid).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(grid, expected)


def test_tensor_version_keeps_leading_batch_dims():
    frames = torch.randn(2, 5, 9, 3, 4, 4)  # (B1, B2, N, C, H, W)
    grid = tensor_frames_to_grid(frames, 3, 3)
    assert grid.shape == (2, 5, 3, 12, 12)
    assert torch.equal(tensor_grid_to_frames(grid, 3, 3), frames)


@pytest.mark.parametrize("rows,cols", LAYOUTS)
def test_temporal_neighbours_are_grid_neighbours(rows, cols):
    cells = serpentine_cells(rows, cols)
    assert sorted(cells) == [(r, c) for r in range(rows) for c in range(cols)]  # a permutation
    for (r0, c0), (r1, c1) in zip(cells, cells[1:]):
        assert abs(r0 - r1) + abs(c0 - c1) == 1


@pytest.mark.parametrize("rows,cols", LAYOUTS)
def test_frame_index_inverts_cells(rows, cols):
    idx = frame_index(rows, cols)
    for k, (r, c) in enumerate(serpentine_cells(rows, cols)):
        assert idx[r, c] == k


def test_known_orders():
    assert serpentine_cells(2, 2) == [(0, 0), (0, 1), (1, 1), (1, 0)]  # TL, TR, BR, BL
    assert frame_index(3, 3).tolist() == [[0, 1, 2], [5, 4, 3], [6, 7, 8]]  # S shape


def test_layout_for_defaults_and_errors():
    assert layout_for(4) == (2, 2)
    assert layout_for(9) == (3, 3)
    assert layout_for(16) == (4, 4)
    assert layout_for(6, rows=2) == (2, 3)
    assert layout_for(6, cols=2) == (3, 2)
    assert layout_for(8, rows=2, cols=4) == (2, 4)
    for bad in (0, 5, 7, 10):
        with pytest.raises(ValueError, match="no default layout"):
            layout_for(bad)
    with pytest.raises(ValueError, match="do not fill"):
        layout_for(7, rows=2)


def test_grid_errors():
    frames = [Image.new("RGB", (4, 4))] * 3
    with pytest.raises(ValueError, match="3 frames for a 2x2"):
        frames_to_grid(frames, 2, 2)
    with pytest.raises(ValueError, match="same size"):
        frames_to_grid([Image.new("RGB", (4, 4))] * 3 + [Image.new("RGB", (5, 4))], 2, 2)
    with pytest.raises(ValueError, match="equal cells"):
        grid_to_frames(Image.new("RGB", (10, 10)), 3, 3)
    with pytest.raises(ValueError, match="at least 1x1"):
        serpentine_cells(0, 3)
