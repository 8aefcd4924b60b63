"""Reading a user's frames: a folder of images (sorted by name) with an optional meta.json."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from pm_lightning.inference.session import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def read_frames(folder: Path) -> tuple[list[Image.Image], dict]:
    """(frames sorted by file name, meta.json or {})."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise InputError(f"{folder}: need at least two frame images, found {len(paths)}")
    frames = [Image.open(p).convert("RGB") for p in paths]
    if len({f.size for f in frames}) > 1:
        size = frames[0].size
        frames = [f if f.size == size else f.resize(size, Image.Resampling.BICUBIC) for f in frames]
    meta_path = Path(folder) / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return frames, meta


def input_grid(frames: list[Image.Image]) -> Image.Image:
    """The input as a serpentine grid (4, 9, n*n frames) or a one-row strip."""
    from pm_lightning.data.grid import frames_to_grid, layout_for

    try:
        rows, cols = layout_for(len(frames))
    except ValueError:
        rows, cols = 1, len(frames)
    return frames_to_grid(frames, rows, cols)
