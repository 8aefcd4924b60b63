"""Reading a user's frames: a folder of images (sorted by name) with an optional meta.json."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from pm_lightning.core.errors import BadInput
from pm_lightning.data.grid import frames_to_grid, layout_for
from pm_lightning.data.image_modes import same_size
from pm_lightning.data.importers import load_user_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def read_frames(folder: Path) -> tuple[list[Image.Image], dict]:
    """(frames sorted by file name, meta.json or {})."""
    if not Path(folder).is_dir():
        raise BadInput(f"--frames {folder} is not a folder of frame images")
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise BadInput(f"{folder}: need at least two frame images, found {len(paths)}")
    frames = [load_user_image(p, "frame") for p in paths]  # RGB by data/image_modes.py; sizes as found
    meta_path = Path(folder) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    except (ValueError, UnicodeDecodeError) as err:
        raise BadInput(
            f"{meta_path} is not valid JSON ({err}); fix or remove it (the caption can be given with --prompt)"
        ) from None
    if not isinstance(meta, dict):
        raise BadInput(f"{meta_path} must hold a JSON object with caption / steps, got {type(meta).__name__}")
    return frames, meta


def input_grid(frames: list[Image.Image]) -> Image.Image:
    """The input as a serpentine grid (4, 9, n*n frames) or a one-row strip, cells of the first frame's size."""
    frames = same_size(frames)[0]

    try:
        rows, cols = layout_for(len(frames))
    except ValueError:
        rows, cols = 1, len(frames)
    return frames_to_grid(frames, rows, cols)
