"""Reference-conditioned grids (stage 2 and ReCraft): frame selection, cell layouts, token masks.

Dual reference (ProcessMaker stage 2, MakeAnything's interpolation): four frames f_a < f_b < f_c < f_d
of one sequence in a 2x2 serpentine grid (TL, TR, BR, BL); f_a (TL) and f_d (BL) are the clean
references, the two cells between are learned. ReCraft: a sequence's own grid with one clean
reference, the finished image, in the LAST serpentine cell (3x3: bottom right, 2x2: bottom left),
in training and at inference alike.

Pure functions: nothing here touches a model.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pm_lightning.data.grid import frame_index, tensor_grid_to_frames

MODES = ("dual", "recraft")
DUAL_LAYOUT = (2, 2)
DUAL_REFERENCES = (0, 3)  # serpentine positions of f_a (top left) and f_d (bottom left)
TOKEN_PX = (
    16  # one packed Flux token: VAE factor 8 x 2x2 packing (a 4x VAE's tokens are 8 px: 16 px is whole tokens too)
)


# ---------------------------------------------------------------- frame selection


def selection_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator for frame choices, from (seed, step, rank) only: its own stream, apart from the noise."""
    digest = hashlib.sha256(f"pm_lightning.references|{seed}|{step}|{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def dual_windows(num_frames: int, max_gap: int = 1) -> list[tuple[int, int, int, int]]:
    """Every increasing 4-tuple of frame indices whose consecutive gaps are all <= max_gap."""
    if max_gap < 1:
        raise ValueError(f"max_gap must be >= 1, got {max_gap}")
    return [w for w in itertools.combinations(range(num_frames), 4) if all(b - a <= max_gap for a, b in zip(w, w[1:]))]


def select_dual_frames(
    num_frames: int, max_gap: int, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """(a, b, c, d): four frames in temporal order, gaps in 1..max_gap, uniform over the valid windows.

    A 4-frame sequence always gives (0, 1, 2, 3); max_gap = 1 gives consecutive frames.
    """
    windows = dual_windows(num_frames, max_gap)
    if not windows:
        raise ValueError(f"a dual-reference sample needs at least 4 frames, the sequence has {num_frames}")
    return windows[int(torch.randint(len(windows), (), generator=generator))]


# ---------------------------------------------------------------- layouts


def reference_positions(mode: str, rows: int, cols: int) -> tuple[int, ...]:
    """Serpentine positions of the clean reference cells: dual -> (0, 3) of 2x2; recraft -> the last cell."""
    if mode == "dual":
        if (rows, cols) != DUAL_LAYOUT:
            raise ValueError(f"dual-reference grids are 2x2, got {rows}x{cols}")
        return DUAL_REFERENCES
    if mode == "recraft":
        return (rows * cols - 1,)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def resize_frames(frames: torch.Tensor, cell: int) -> torch.Tensor:
    """(N, 3, h, w) frames in [-1, 1] -> (N, 3, cell, cell), each frame on its own (nothing bleeds across cells)."""
    if frames.shape[-2:] == (cell, cell):
        return frames
    out = F.interpolate(frames.float(), size=(cell, cell), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(-1, 1).to(frames.dtype)


def check_cell(cell: int) -> None:
    """A cell must cover whole packed tokens (multiples of 16 px)."""
    if cell < TOKEN_PX or cell % TOKEN_PX:
        raise ValueError(f"cell must be a positive multiple of {TOKEN_PX} px (whole Flux tokens), got {cell}")


def dual_frames(
    grid: torch.Tensor, rows: int, cols: int, cell: int, max_gap: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """One (3, H, W) sequence grid -> ((4, 3, cell, cell) frames a, b, c, d, their source frame indices)."""
    frames = tensor_grid_to_frames(grid, rows, cols)  # (n, 3, h, w) in temporal order
    picked = select_dual_frames(frames.shape[0], max_gap, generator)
    return resize_frames(frames[list(picked)], cell), picked  # (4, 3, cell, cell)


def recraft_frames(grid: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """One (3, H, W) sequence grid -> (rows*cols, 3, H/rows, W/cols) frames; the finished image is the last."""
    return tensor_grid_to_frames(grid, rows, cols)


# ---------------------------------------------------------------- token masks


def cell_token_mask(img_ids: torch.Tensor, rows: int, cols: int, positions: Sequence[int]) -> torch.Tensor:
    """(N,) bool: which packed tokens (ids (N, 3) = (0, row, col)) lie in the cells of serpentine `positions`.

    The token grid is (max row + 1) x (max col + 1); it must split into rows x cols equal cells.
    """
    tok_r, tok_c = img_ids[:, 1].long(), img_ids[:, 2].long()  # (N,), (N,)
    th, tw = int(tok_r.max()) + 1, int(tok_c.max()) + 1
    if th % rows or tw % cols:
        raise ValueError(f"a {th}x{tw} token grid does not split into {rows}x{cols} cells of whole tokens")
    frame_of = torch.as_tensor(frame_index(rows, cols), device=img_ids.device)  # (rows, cols)
    frames = frame_of[tok_r // (th // rows), tok_c // (tw // cols)]  # (N,) serpentine position of each token
    wanted = torch.as_tensor(sorted(set(positions)), device=img_ids.device, dtype=torch.long)
    return torch.isin(frames, wanted)


def with_clean_references(xt: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x_t with the reference tokens replaced by the clean x0: mask * x0 + (1 - mask) * x_t (exact, a select)."""
    return torch.where(mask.unsqueeze(-1), x0, xt)  # (B, N, D)


# ---------------------------------------------------------------- captions


def stage2_caption(caption: str, steps: Sequence[str], targets: Sequence[int], step_text: bool) -> str:
    """The sequence caption; with `step_text`, ", between: <step b>; <step c>" when those step texts exist."""
    texts = [steps[i] for i in targets if i < len(steps) and steps[i]]
    if not step_text or not texts:
        return caption
    return f"{caption}, between: {'; '.join(texts)}"
