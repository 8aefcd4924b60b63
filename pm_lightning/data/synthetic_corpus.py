"""Synthetic procedural corpus: deterministic step-by-step sequences in several domains.

`generate_sequence(domain, seed, size)` renders one sequence (frames, caption, one caption
per step); `write_corpus` writes many in the raw folder format
`OUT/<domain>/seq-000012/{00.png, ..., meta.json}`. Seven training domains and two
held-out domains (for unseen-domain tests); both are written, training configs filter.
Every domain has its own empty background so a tiny model can tell them apart at a glance.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from pm_lightning.core.progress import progress_bar
from pm_lightning.data import synthetic_held_out as held_out
from pm_lightning.data import synthetic_renderers as sd
from pm_lightning.data.synthetic_canvas import Canvas

# ---------------------------------------------------------------- backgrounds (empty frames)


def bg_plain(rgb):
    """Background painter for one flat colour."""
    return lambda c: c.rect(0, 0, 1, 1, rgb)


def bg_painting(c: Canvas):
    """Dark wall, wooden frame, blank white canvas."""
    c.rect(0, 0, 1, 1, (80, 66, 62))
    c.rect(0.04, 0.04, 0.96, 0.96, (150, 100, 50))
    c.rect(0.1, 0.1, 0.9, 0.9, (250, 248, 238))


def bg_fabric(c: Canvas):
    """Teal quilted fabric: a flat colour with a light diagonal stitch lattice."""
    c.rect(0, 0, 1, 1, (140, 200, 190))
    for k in range(-4, 9):
        c.line([(k / 4, 0), (k / 4 + 1, 1)], (165, 220, 210), 0.012)


def bg_cake(c: Canvas):
    """Cream kitchen wall over a wooden table."""
    c.rect(0, 0, 1, 0.72, (252, 236, 205))
    c.rect(0, 0.72, 1, 1, (185, 135, 90))


def bg_paper(c: Canvas):
    """Ruled notebook paper with a red margin."""
    c.rect(0, 0, 1, 1, (250, 250, 245))
    for k in range(1, 8):
        c.line([(0, k / 8), (1, k / 8)], (190, 210, 240), 0.01)
    c.line([(0.12, 0), (0.12, 1)], (235, 160, 160), 0.01)


def bg_garden(c: Canvas):
    """Pale sky over a lawn."""
    c.rect(0, 0, 1, 0.55, (175, 215, 245))
    c.rect(0, 0.55, 1, 1, (150, 205, 115))


def bg_checker(c: Canvas):
    """The transparency checkerboard of a pixel editor, one check per sprite cell."""
    for i in range(10):
        for j in range(10):
            rgb = (150, 150, 160) if (i + j) % 2 else (180, 180, 190)
            c.rect(i / 10, j / 10, (i + 1) / 10, (j + 1) / 10, rgb)


@dataclass(frozen=True)
class DomainSpec:
    """How one synthetic domain is drawn."""

    frames: int
    background: Callable[[Canvas], None]
    render: Callable[[random.Random, Canvas], str]


SPECS: dict[str, DomainSpec] = {
    "lego": DomainSpec(9, bg_plain((205, 215, 230)), sd.render_lego),
    "painting": DomainSpec(9, bg_painting, sd.render_painting),
    "fabric_toy": DomainSpec(4, bg_fabric, sd.render_fabric_toy),
    "cake": DomainSpec(4, bg_cake, sd.render_cake),
    "sketch": DomainSpec(9, bg_paper, sd.render_sketch),
    "garden": DomainSpec(9, bg_garden, sd.render_garden),
    "pixel_art": DomainSpec(4, bg_checker, sd.render_pixel_art),
    "origami": DomainSpec(4, bg_plain((85, 65, 115)), held_out.render_origami),
    "mosaic": DomainSpec(9, bg_plain((165, 160, 150)), held_out.render_mosaic),
}
TRAIN_DOMAINS: tuple[str, ...] = ("lego", "painting", "fabric_toy", "cake", "sketch", "garden", "pixel_art")
TRAIN_SEED, TRAIN_PER_DOMAIN = 0, 200
"""The training split of `make shards` (`python -m pm_lightning.synth`'s defaults): corpus seed, sequences per domain;
the step-text vocabulary of `inference/step_texts.py` is this split's."""
HELDOUT_DOMAINS: tuple[str, ...] = ("origami", "mosaic")
DOMAINS: dict[str, int] = {name: spec.frames for name, spec in SPECS.items()}


@dataclass
class Sequence:
    """One procedural sequence: frame k shows the state after step k; the last is finished. `changes[k]`: the
    elements (drawing primitives) step k added or painted over, the ground-truth amount of change."""

    domain: str
    caption: str
    steps: list[str]
    frames: list[Image.Image]
    changes: list[int] = field(default_factory=list)

    def change_between(self, i: int, j: int) -> int:
        """Ground-truth amount of change from frame i to frame j > i: the elements of steps i+1 .. j."""
        if not 0 <= i < j < len(self.frames):
            raise ValueError(f"frames {i} -> {j}: need 0 <= i < j < {len(self.frames)}")
        return sum(self.changes[i + 1 : j + 1])


def spec_for(domain: str) -> DomainSpec:
    """The domain's spec, or a ValueError naming the known domains."""
    if domain not in SPECS:
        raise ValueError(f"unknown synthetic domain {domain!r}; known: {', '.join(SPECS)}")
    return SPECS[domain]


def blank_frame(domain: str, size: int = 64) -> Image.Image:
    """The domain's empty background, before any step."""
    canvas = Canvas(size)
    spec_for(domain).background(canvas)
    return canvas.img


def generate_sequence(domain: str, seed: int, size: int = 64) -> Sequence:
    """Render one sequence of `domain`; a pure function of (domain, seed, size)."""
    spec = spec_for(domain)
    canvas = Canvas(size)
    spec.background(canvas)
    caption = spec.render(random.Random(seed), canvas)
    if len(canvas.frames) != spec.frames:
        raise AssertionError(f"{domain} rendered {len(canvas.frames)} frames, expected {spec.frames}")
    return Sequence(domain, caption, canvas.steps, canvas.frames, canvas.changes)


def sequence_seed(seed: int, domain: str, index: int) -> int:
    """Stable per-sequence seed (crc32, not Python's per-process randomised hash())."""
    return zlib.crc32(f"{seed}/{domain}/{index}".encode())


def write_sequence(seq: Sequence, folder: Path) -> None:
    """Frames as 00.png, 01.png, ... and meta.json in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(seq.frames):
        frame.save(folder / f"{k:02d}.png")
    meta = {"caption": seq.caption, "steps": seq.steps}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def write_corpus(
    out: Path,
    per_domain: int | Mapping[str, int] = 200,
    size: int = 64,
    seed: int = 0,
    domains: Iterable[str] | None = None,
    progress: bool = True,
) -> dict:
    """Write `per_domain` sequences of each domain under `out` (a mapping: that many of each domain it names, and
    only those); returns {domain: count}. Sequence i of a domain is the same whatever the others' counts."""
    if isinstance(per_domain, Mapping):
        counts = dict(per_domain)
    else:
        counts = {name: per_domain for name in (list(domains) if domains is not None else list(DOMAINS))}
    for name in counts:
        spec_for(name)
    out = Path(out)
    jobs = [(name, i) for name, n in counts.items() for i in range(n)]
    for name, i in progress_bar(jobs, desc="synth", unit="seq", enabled=progress):
        seq = generate_sequence(name, sequence_seed(seed, name, i), size)
        write_sequence(seq, out / name / f"seq-{i:06d}")
    return counts


def contact_sheet(domains: Iterable[str] | None = None, per_row: int = 3, size: int = 64, seed: int = 0) -> Image.Image:
    """One row per domain: its name, then `per_row` sequences as serpentine grids."""
    # lazy: data/grid.py imports torch, 5 s the synth command never needs (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.data.grid import frames_to_grid, layout_for

    names = list(domains) if domains is not None else list(DOMAINS)
    gap, label = size // 8, 2 * size
    cell = 3 * size  # a 3x3 grid; 2x2 grids are centred in the same cell
    sheet = Image.new("RGB", (label + per_row * (cell + gap), len(names) * (cell + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(8, size // 4))
    for r, name in enumerate(names):
        y = r * (cell + gap)
        tag = "\n(held out)" if name in HELDOUT_DOMAINS else ""
        draw.text((4, y + cell // 2 - 6), f"{name}{tag}\n{DOMAINS[name]} frames", fill=(0, 0, 0), font=font)
        for k in range(per_row):
            seq = generate_sequence(name, sequence_seed(seed, name, k), size)
            grid = frames_to_grid(seq.frames, *layout_for(len(seq.frames)))
            off = (cell - grid.width) // 2
            sheet.paste(grid, (label + k * (cell + gap) + off, y + off))
    return sheet
