"""A plain folder of pictures with same-name `.txt` captions (`DIR/a.png` + `DIR/a.txt`), the convention of the
kohya / SimpleTuner / ai-toolkit trainers: grid images -> sequences for the shard writer (`shards --images`),
single pictures -> a style LoRA's training set (`style_lora --images`).

Discovery reads each image's header only; bad input (no caption, an unreadable file, a grid whose size differs from
the folder's) becomes a `Skipped(path, reason)`, reported and counted like the other importers' (docs/DATA.md).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pm_lightning.core.errors import BadInput
from pm_lightning.data.grid import layout_for
from pm_lightning.data.importers import (
    ORDERS,
    GridSequence,
    ImageReadError,
    Skipped,
    image_extensions,
    natural_key,
    open_rgb,
    safe_key,
)
from pm_lightning.data.shard_writer import report_stderr

LAYOUT_FILE = "layout.json"
"""Optional sidecar of a grid folder: `{"frames": 9}` or `{"rows": 3, "cols": 3}`, and `"order": "s" | "reverse-s"`."""
KOHYA_REPEATS = re.compile(r"^\d+_(.+)$")
"""kohya's `<repeats>_<name>` folder names (`10_origami`): the domain is the part after the repeat count."""


@dataclass(frozen=True)
class Captioned:
    """An image file, its caption (from `<stem>.txt`) and its size in px (from the header)."""

    path: Path
    caption: str
    size: tuple[int, int]


def folder_domain(folder: str | Path, domain: str | None = None) -> str:
    """`domain` when given, else the folder's name without kohya's repeat prefix (`10_origami` -> `origami`)."""
    if domain:
        return domain
    name = Path(folder).resolve().name
    match = KOHYA_REPEATS.match(name)
    return match.group(1) if match else name


def captioned_images(folder: str | Path) -> Iterator[Captioned | Skipped]:
    """Every image directly in `folder` (natural name order) with its `<stem>.txt` caption, or Skipped."""
    folder = Path(folder)
    exts = image_extensions()
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts]
    for path in sorted(files, key=lambda p: natural_key(p.name)):
        yield _captioned(path)


def _captioned(path: Path) -> Captioned | Skipped:
    """One image and its caption; its size from the header (a file PIL cannot identify is skipped)."""
    txt = path.with_suffix(".txt")
    if not txt.is_file():
        return Skipped(str(path), f"missing caption: no {txt.name} beside the image")
    try:
        caption = " ".join(txt.read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError) as err:
        return Skipped(str(txt), f"unreadable caption: {err}")
    if not caption:
        return Skipped(str(txt), "missing caption: the file is empty")
    try:
        with Image.open(path) as probe:
            size = probe.size
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        return Skipped(str(path), f"unreadable image: {err}")
    return Captioned(path, caption, size)


def same_size(items: Iterable[Captioned | Skipped]) -> list[Captioned | Skipped]:
    """Grids of one folder share one size: the most common size stays, every other one is Skipped naming both."""
    items = list(items)
    sizes = Counter(i.size for i in items if isinstance(i, Captioned))
    if len(sizes) < 2:
        return items
    (w, h), n = sizes.most_common(1)[0]
    return [
        Skipped(str(i.path), f"mixed sizes: {i.size[0]}x{i.size[1]} px, but {n} grids of the folder are {w}x{h}")
        if isinstance(i, Captioned) and i.size != (w, h)
        else i
        for i in items
    ]


# ------------------------------------------------------------------------------------------------ grids


def grid_layout(folder: str | Path, frames: int | None = None, order: str | None = None) -> tuple[int, int, str]:
    """(rows, cols, order) of a grid folder: the flags, else `layout.json`; BadInput naming the fix when neither."""
    path = Path(folder) / LAYOUT_FILE
    side = _read_sidecar(path) if path.is_file() else {}
    order = order or side.get("order", "s")
    if order not in ORDERS:
        raise BadInput(f"{path}: order must be one of {ORDERS}, got {order!r}")
    if frames is not None:
        return (*layout_for(frames), order)
    if "rows" in side or "cols" in side:
        rows, cols = side.get("rows"), side.get("cols")
        if not all(isinstance(n, int) and n > 0 for n in (rows, cols)):
            raise BadInput(f"{path}: rows and cols must both be positive integers, got {rows!r} and {cols!r}")
        return rows, cols, order
    if "frames" in side:
        try:
            return (*layout_for(int(side["frames"])), order)
        except ValueError as err:
            raise BadInput(f"{path}: {err}") from None
    raise BadInput(
        f"{folder}: the grid layout is unknown: pass --frames 9 (3x3) or --frames 4 (2x2), or write "
        f'{path} = {{"frames": 9}} (or {{"rows": R, "cols": C}}; optional "order": "s" | "reverse-s")'
    )


def _read_sidecar(path: Path) -> dict:
    """layout.json as a dict with only known keys; BadInput naming the file otherwise."""
    try:
        side = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BadInput(f"{path} is not readable JSON ({err})") from None
    known = {"frames", "rows", "cols", "order"}
    if not isinstance(side, dict) or set(side) - known:
        raise BadInput(f"{path}: expected an object with keys {sorted(known)}, got {side!r}")
    return side


def discover_image_folder(
    folder: str | Path, frames: int | None = None, order: str | None = None, domain: str | None = None
) -> Iterator[GridSequence | Skipped]:
    """The grid images of one folder as sequences of one domain (the flag, else the folder's name)."""
    rows, cols, order = grid_layout(folder, frames, order)
    name = folder_domain(folder, domain)
    for item in same_size(captioned_images(folder)):
        if isinstance(item, Skipped):
            yield item
        else:
            key = safe_key(f"{name}/{item.path.stem}")
            yield GridSequence(key, name, item.caption, rows, cols, str(item.path), [], order)


# --------------------------------------------------------------------------------------------- pictures


def load_pictures(folder: str | Path, size: int) -> tuple[list[tuple[np.ndarray, str]], list[Skipped]]:
    """(picture (size, size, 3) uint8, caption) pairs of a folder of single pictures, and what was skipped.

    Pictures of any size are accepted: each is cropped to its centre square and resized (Lanczos), as the
    LoRA trainers of the convention do without bucketing."""
    pictures, skipped = [], []
    for item in captioned_images(folder):
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        try:
            image = open_rgb(item.path)
        except ImageReadError as err:
            skipped.append(Skipped(str(item.path), f"unreadable image: {err}"))
            continue
        square = ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS)
        pictures.append((np.asarray(square), item.caption))
    return pictures, skipped


def picture_set(folder: str | Path, size: int, strict: bool = False) -> tuple[list[tuple[np.ndarray, str]], int]:
    """`load_pictures` with every skip reported on stderr; (pictures, skipped count). BadInput when the folder is
    missing, when no picture is left, or under `strict` at the first skip."""
    if not Path(folder).is_dir():
        raise BadInput(f"--images {folder} is not a directory")
    pictures, skipped = load_pictures(folder, size)
    for skip in skipped:
        report_stderr(skip)
    if skipped and strict:
        raise BadInput(f"--strict: {skipped[0].path}: {skipped[0].reason} ({len(skipped)} skipped in all)")
    if not pictures:
        raise BadInput(
            f"no usable picture in {folder} ({len(skipped)} skipped): it needs images (PNG, JPEG, WebP...) each with "
            "a same-name .txt caption (a.png + a.txt)"
        )
    return pictures, len(skipped)
