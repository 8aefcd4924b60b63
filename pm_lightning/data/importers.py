"""Raw sequence formats -> `SequenceSource`s: the folder format and the MakeAnything release.

Discovery is cheap and sequential (paths, captions, layout checks); loading the pixels is
`SequenceSource.load_frames`, run later (possibly in worker processes) by `data/shards.py`.
Every input that cannot become a sequence is reported as a `Skipped(path, reason)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pm_lightning.core.errors import BadInput
from pm_lightning.data.grid import layout_for, serpentine_cells
from pm_lightning.data.image_modes import as_rgb

CAPTION_FILES = ("meta.json", "caption.txt")
LORA_TAG = re.compile(r"--lora_up_cur\s+(\d+)")
ORDERS = ("s", "reverse-s")
PAD_MODES = ("white", "edge")


@dataclass(frozen=True)
class Skipped:
    """An input that was not imported, with the reason (reported and counted)."""

    path: str
    reason: str


@dataclass
class SequenceSource:
    """One sequence found on disk; `load_frames` reads its pixels in temporal order."""

    key: str
    domain: str
    caption: str
    rows: int
    cols: int
    source: str
    steps: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        """Number of frames in the sequence."""
        return self.rows * self.cols

    def load_frames(self) -> list[Image.Image]:
        """RGB frames in temporal order; raises OSError/ValueError naming the bad file."""
        raise NotImplementedError


@dataclass
class FolderSequence(SequenceSource):
    """A `ROOT/<domain>/<sequence_id>/` folder of frame files."""

    frame_paths: list[str] = field(default_factory=list)

    def load_frames(self) -> list[Image.Image]:
        """Open every frame file (sorted by name) as RGB."""
        return [open_rgb(p) for p in self.frame_paths]


@dataclass
class GridSequence(SequenceSource):
    """An already-arranged MakeAnything grid image; `order` is "s" or "reverse-s"."""

    order: str = "s"

    def load_frames(self) -> list[Image.Image]:
        """Cut the grid into cells and return them in temporal order."""
        grid = open_rgb(self.source)
        return [grid.crop(box) for box in cell_boxes(grid.size, self.rows, self.cols, self.order)]


def cell_boxes(size: tuple[int, int], rows: int, cols: int, order: str) -> list[tuple[int, int, int, int]]:
    """Crop boxes of frames 0..n-1 of a grid of `size` px; "reverse-s" mirrors the columns (ɔ shape)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    w, h = size
    xs = [round(c * w / cols) for c in range(cols + 1)]  # tolerant of sizes not divisible by cols
    ys = [round(r * h / rows) for r in range(rows + 1)]
    boxes = []
    for r, c in serpentine_cells(rows, cols):
        c = cols - 1 - c if order == "reverse-s" else c
        boxes.append((xs[c], ys[r], xs[c + 1], ys[r + 1]))
    return boxes


MAX_INPUT_PIXELS = 64_000_000  # 8000 x 8000: above this an input is refused before it is decoded
MIN_INPUT_SIDE = 16  # one Flux latent token


def load_user_image(path: str | Path, role: str = "image") -> Image.Image:
    """An image a user passes in, as RGB; BadInput naming the file for a missing, unreadable, tiny or huge one."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{role} {path} not found")
    try:
        with Image.open(path) as probe:  # reads the header only: a decompression bomb is refused undecoded
            w, h = probe.size
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise BadInput(
            f"{role} {path} is not a readable image ({type(err).__name__}: {err}); give a PNG, JPEG or WebP"
        ) from None
    if w * h > MAX_INPUT_PIXELS:
        raise BadInput(
            f"{role} {path} is {w}x{h} px ({w * h / 1e6:.0f} Mpx), over the {MAX_INPUT_PIXELS // 1_000_000} Mpx limit: downscale it first"
        )
    if min(w, h) < MIN_INPUT_SIDE:
        raise BadInput(f"{role} {path} is {w}x{h} px: at least {MIN_INPUT_SIDE} px per side are needed")
    try:
        return open_rgb(path)
    except ImageReadError as err:
        raise BadInput(f"{role} {path} is not a readable image ({err}); give a PNG, JPEG or WebP") from None


class ImageReadError(OSError):
    """An image file PIL cannot decode; `path` names it."""

    def __init__(self, path: str | Path, err: Exception):
        super().__init__(str(err))
        self.path = str(path)


def open_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB (transparent pixels become white); ImageReadError if it cannot."""
    try:
        return _open_rgb(path)
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise ImageReadError(path, err) from err


def _open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB by the rules of `data/image_modes.py` (transparency over white)."""
    with Image.open(path) as img:
        img.load()
        rgb = as_rgb(img, str(path))
        return rgb.copy() if rgb is img else rgb  # detached from the closed file


def pad_to_square(img: Image.Image, mode: str = "white") -> Image.Image:
    """Centre a frame on a square canvas filled with white or with the median colour of its border."""
    w, h = img.size
    if w == h:
        return img
    if mode not in PAD_MODES:
        raise ValueError(f"pad must be one of {PAD_MODES}, got {mode!r}")
    fill = (255, 255, 255) if mode == "white" else border_colour(img)
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def border_colour(img: Image.Image) -> tuple[int, int, int]:
    """Per-channel median of the one-pixel outer ring of an RGB image."""
    w, h = img.size
    px = img.load()
    ring = [px[x, 0] for x in range(w)] + [px[x, h - 1] for x in range(w)]
    ring += [px[0, y] for y in range(h)] + [px[w - 1, y] for y in range(h)]
    return tuple(sorted(p[ch] for p in ring)[len(ring) // 2] for ch in range(3))


def natural_key(name: str) -> list:
    """Sort key that orders frame_2 before frame_10 (zero-padded names sort as usual)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def safe_key(text: str) -> str:
    """WebDataset-safe sample key: no dots (they start the extension), no odd characters."""
    return re.sub(r"[^A-Za-z0-9_\-/]", "_", text)


def image_extensions() -> set[str]:
    """File suffixes PIL can open."""
    return {ext.lower() for ext in Image.registered_extensions()}


# ----------------------------------------------------------------------------------- folder


def discover_folder(root: str | Path) -> Iterator[SequenceSource | Skipped]:
    """Sequences of a `ROOT/<domain>/<sequence_id>/` tree, sorted by domain then sequence id."""
    root = Path(root)
    exts = image_extensions()
    for domain_dir in _visible_dirs(root):
        for seq_dir in _visible_dirs(domain_dir):
            yield _folder_sequence(root, domain_dir.name, seq_dir, exts)


def _visible_dirs(path: Path) -> list[Path]:
    """Non-hidden sub-directories, sorted by natural name order."""
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name)
    )


def _folder_sequence(root: Path, domain: str, seq_dir: Path, exts: set[str]) -> SequenceSource | Skipped:
    """One sequence folder -> FolderSequence, or Skipped with the reason."""
    files = [p for p in seq_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    frames = sorted(
        (p for p in files if p.name not in CAPTION_FILES and p.suffix.lower() in exts),
        key=lambda p: natural_key(p.name),
    )
    if not frames:
        return Skipped(str(seq_dir), "empty folder: no image files")
    meta = _read_meta(seq_dir)
    if isinstance(meta, Skipped):
        return meta
    caption, steps = meta
    try:
        rows, cols = layout_for(len(frames))
    except ValueError as err:
        return Skipped(str(seq_dir), f"frame count does not fit a grid: {err}")
    if steps and len(steps) != len(frames):
        return Skipped(str(seq_dir), f"meta.json has {len(steps)} steps for {len(frames)} frames")
    key = safe_key(str(seq_dir.relative_to(root)))
    return FolderSequence(key, domain, caption, rows, cols, str(seq_dir), steps, [str(p) for p in frames])


def _read_meta(seq_dir: Path) -> tuple[str, list[str]] | Skipped:
    """(caption, steps) from meta.json or caption.txt."""
    meta_path, txt_path = seq_dir / "meta.json", seq_dir / "caption.txt"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:
            return Skipped(str(meta_path), f"unreadable meta.json: {err}")
        caption, steps = (meta.get("caption"), meta.get("steps") or []) if isinstance(meta, dict) else (None, [])
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            return Skipped(str(meta_path), "meta.json 'steps' must be a list of strings")
    elif txt_path.is_file():
        caption, steps = txt_path.read_text(encoding="utf-8"), []
    else:
        return Skipped(str(seq_dir), 'missing caption: add meta.json {"caption": ...} or caption.txt')
    if not isinstance(caption, str) or not caption.strip():
        return Skipped(str(seq_dir), "missing caption: meta.json/caption.txt has no caption text")
    return " ".join(caption.split()), steps


# ------------------------------------------------------------------------------ MakeAnything


def discover_makeanything(
    root: str | Path, frames: int = 9, order: str = "s", domain_names: Sequence[str] | None = None
) -> Iterator[SequenceSource | Skipped]:
    """`<name>.png` grids + `<name>.caption` files under `root` (recursively), sorted by path."""
    if order not in ORDERS:
        raise ValueError(f"--order must be one of {ORDERS}, got {order!r}")
    rows, cols = layout_for(frames)
    root = Path(root)
    pngs = [p for p in root.rglob("*.png") if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    for png in sorted(pngs, key=lambda p: natural_key(str(p.relative_to(root)))):
        yield _grid_sequence(root, png, rows, cols, order, domain_names)


def parse_caption(text: str, domain_names: Sequence[str] | None = None) -> tuple[str, str | None]:
    """(caption without the `--lora_up_cur N` tag, domain name or None when untagged)."""
    match = LORA_TAG.search(text)
    caption = " ".join(LORA_TAG.sub(" ", text).split())
    if match is None:
        return caption, None
    index = int(match.group(1))
    if domain_names is None:
        return caption, f"domain-{index}"
    if index >= len(domain_names):
        raise ValueError(f"--lora_up_cur {index} but --domain-names lists only {len(domain_names)} names")
    return caption, domain_names[index]


def _grid_sequence(
    root: Path, png: Path, rows: int, cols: int, order: str, names: Sequence[str] | None
) -> SequenceSource | Skipped:
    """One MakeAnything grid -> GridSequence, or Skipped with the reason."""
    cap_path = png.with_suffix(".caption")
    if not cap_path.is_file():
        return Skipped(str(png), f"missing caption: no {cap_path.name} beside the grid")
    try:
        caption, domain = parse_caption(cap_path.read_text(encoding="utf-8"), names)
    except (ValueError, OSError) as err:
        return Skipped(str(cap_path), str(err))
    if not caption:
        return Skipped(str(cap_path), "missing caption: empty text after removing the --lora_up_cur tag")
    rel = str(png.relative_to(root).with_suffix(""))
    if domain is None:
        if png.parent == root:
            return Skipped(str(cap_path), "no --lora_up_cur N tag and no domain sub-folder: domain unknown")
        domain, key = png.parent.relative_to(root).parts[0], safe_key(rel)
    else:
        key = safe_key(f"{domain}/{rel}")
    return GridSequence(key, domain, caption, rows, cols, str(png), [], order)
