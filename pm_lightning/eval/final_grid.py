"""The grids a final sequence is scored on, after adaptive insertion and deletion changed its frames.

A stage-2 sample's `grid.png` is its stage-1 grid; its `frames/` are the final sequence. When the adaptive steps
applied an edit, the grid no longer shows the sequence, so (docs/EVALUATION.md, "Final sequences"):

- Align scores `align_grid`: the final frames resampled into the stage-1 layout's frame count R x C by progress
  fraction (grid cell k shows final frame j(k) = round(k (T'-1) / (R C - 1)), `scores.progress_index`), each at
  the stage-1 cell size, tiled serpentine in that layout. The CLIP score of a grid depends on its layout and cell
  size, so every row of an ablation is scored on the same layout; only the content differs. T' > R C drops frames
  between the kept ones, T' < R C shows some twice.
- the judge sees `square_grid`: every final frame, serpentine in a side x side grid (side = ceil(sqrt(T'))), cells
  after the last frame left white.

Without an applied edit the final frames are the stage-1 frames and both are the stage-1 grid itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from pm_lightning.data.grid import frames_to_grid
from pm_lightning.eval.scores import progress_index

BLANK = (255, 255, 255)
"""The colour of a square grid's cells after the last frame."""


def _cells(frames: Sequence[Image.Image], cell: tuple[int, int]) -> list[Image.Image]:
    return [f.convert("RGB") if f.size == cell else f.convert("RGB").resize(cell, Image.Resampling.BICUBIC) for f in frames]  # fmt: skip


def resample(frames: Sequence[Image.Image], n: int) -> list[Image.Image]:
    """`n` of the frames, frame k of the result being frames[j(k)] with j(k) = round(k (T'-1) / (n-1))."""
    if not frames or n < 1:
        raise ValueError(f"cannot resample {len(frames)} frames into {n}")
    return [frames[j] for j in progress_index(n, len(frames)).tolist()]


def align_grid(frames: Sequence[Image.Image], rows: int, cols: int, cell: tuple[int, int]) -> Image.Image:
    """The final frames resampled into rows x cols, at `cell` (w, h) px each, as a serpentine grid."""
    return frames_to_grid(_cells(resample(frames, rows * cols), cell), rows, cols)


def square_grid(frames: Sequence[Image.Image], cell: tuple[int, int]) -> Image.Image:
    """Every frame at `cell` px, serpentine in a side x side grid (side = ceil(sqrt(T'))), the rest white."""
    side = math.isqrt(len(frames) - 1) + 1 if frames else 0
    if not side:
        raise ValueError("no frames for a grid")
    cells = _cells(frames, cell) + [Image.new("RGB", cell, BLANK)] * (side * side - len(frames))
    return frames_to_grid(cells, side, side)
