"""Serpentine grids: frame order <-> (row, col) cells, frames <-> grid images.

Row r of an R x C grid runs left-to-right when r is even and right-to-left when r is odd,
so temporally adjacent frames are always grid neighbours: 9 frames -> 3x3 "S",
4 frames -> 2x2 TL, TR, BR, BL. A grid's id is the sha256 of its PNG bytes (`grid_id`): the shard stream puts it
in every batch and the VAE latent cache is keyed on it (`data/shard_grids.py`, `models/vae_latents.py`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported by the tensor functions only: the data commands start without it
    import torch

DEFAULT_LAYOUTS = {4: (2, 2), 9: (3, 3)}


def grid_id(png: bytes) -> str:
    """The id of a grid: sha256 of its PNG bytes (hex)."""
    return hashlib.sha256(png).hexdigest()


def serpentine_cells(rows: int, cols: int) -> list[tuple[int, int]]:
    """(row, col) of frame k for k = 0 .. rows*cols-1."""
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be at least 1x1, got {rows}x{cols}")
    cells = []
    for r in range(rows):
        order = range(cols) if r % 2 == 0 else range(cols - 1, -1, -1)
        cells.extend((r, c) for c in order)
    return cells


def frame_index(rows: int, cols: int) -> np.ndarray:
    """(rows, cols) array whose entry is the frame index shown in that cell."""
    idx = np.empty((rows, cols), dtype=np.int64)
    for k, (r, c) in enumerate(serpentine_cells(rows, cols)):
        idx[r, c] = k
    return idx


def layout_for(frames: int, rows: int | None = None, cols: int | None = None) -> tuple[int, int]:
    """Grid shape for a frame count: explicit rows/cols, else 4 -> 2x2, 9 -> 3x3, else a square."""
    if rows is not None or cols is not None:
        rows = rows or math.ceil(frames / cols)
        cols = cols or math.ceil(frames / rows)
        if rows * cols != frames:
            raise ValueError(f"{frames} frames do not fill a {rows}x{cols} grid")
        return rows, cols
    if frames in DEFAULT_LAYOUTS:
        return DEFAULT_LAYOUTS[frames]
    side = math.isqrt(frames)
    if side * side == frames and frames > 0:
        return side, side
    raise ValueError(f"{frames} frames fit no default layout (4 -> 2x2, 9 -> 3x3, n*n); give rows and cols explicitly")


def frames_to_grid(frames: Sequence[Image.Image], rows: int, cols: int) -> Image.Image:
    """Paste equally sized frames into a serpentine grid image."""
    if len(frames) != rows * cols:
        raise ValueError(f"{len(frames)} frames for a {rows}x{cols} grid")
    w, h = frames[0].size
    if any(f.size != (w, h) for f in frames):
        raise ValueError("all frames must have the same size")
    grid = Image.new(frames[0].mode, (cols * w, rows * h))
    for frame, (r, c) in zip(frames, serpentine_cells(rows, cols)):
        grid.paste(frame, (c * w, r * h))
    return grid


def grid_to_frames(grid: Image.Image, rows: int, cols: int) -> list[Image.Image]:
    """Cut a serpentine grid image back into its frames, in temporal order."""
    gw, gh = grid.size
    if gw % cols or gh % rows:
        raise ValueError(f"grid of {gw}x{gh} px does not split into {rows}x{cols} equal cells")
    w, h = gw // cols, gh // rows
    return [grid.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)) for r, c in serpentine_cells(rows, cols)]


def tensor_frames_to_grid(frames: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(..., N, C, H, W) frames -> (..., C, rows*H, cols*W) serpentine grid."""
    import torch  # inside: the data commands import this module and start without torch (5 s)

    *lead, n, ch, h, w = frames.shape
    if n != rows * cols:
        raise ValueError(f"{n} frames for a {rows}x{cols} grid")
    order = torch.as_tensor(frame_index(rows, cols).reshape(-1), device=frames.device)
    cells = frames.index_select(-4, order)  # (..., R*C, C, H, W) in cell order
    cells = cells.reshape(*lead, rows, cols, ch, h, w)
    cells = cells.movedim(-3, -5)  # (..., C, R, Cc, H, W)
    cells = cells.transpose(-3, -2)  # (..., C, R, H, Cc, W)
    return cells.reshape(*lead, ch, rows * h, cols * w)


def tensor_grid_to_frames(grid: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(..., C, rows*H, cols*W) serpentine grid -> (..., N, C, H, W) frames in temporal order."""
    import torch  # inside: the data commands import this module and start without torch (5 s)

    *lead, ch, gh, gw = grid.shape
    if gh % rows or gw % cols:
        raise ValueError(f"grid of {gh}x{gw} does not split into {rows}x{cols} equal cells")
    h, w = gh // rows, gw // cols
    cells = grid.reshape(*lead, ch, rows, h, cols, w).transpose(-3, -2)  # (..., C, R, Cc, H, W)
    cells = cells.movedim(-5, -3).reshape(*lead, rows * cols, ch, h, w)  # cell order
    order = [r * cols + c for r, c in serpentine_cells(rows, cols)]
    return cells.index_select(-4, torch.as_tensor(order, device=grid.device))
