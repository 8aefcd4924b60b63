"""Synthetic procedural corpus: deterministic step-by-step sequences in several domains.

`generate_sequence(domain, seed, size)` renders one sequence (frames, caption, one caption
per step); `write_corpus` writes many in the raw folder format
`OUT/<domain>/seq-000012/{00.png, ..., meta.json}`. By default every step of a domain is one frame; with
`varied=True` the frames show a process of a varying number of steps (`data/synthetic_process.py`). Seven training domains and two
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
from pm_lightning.data import synthetic_varied as sv
from pm_lightning.data.synthetic_canvas import Canvas
from pm_lightning.data.synthetic_process import covered_steps, frame_indices, render_process, step_spread

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
    elements (drawing primitives) step k added or painted over, the ground-truth amount of change.

    A varied sequence (`generate_sequence(..., varied=True)`) shows a process of S steps: frame k covers
    `process_steps[k]` of them (the first frame: every step up to its state; 0: frame k repeats frame k - 1's state),
    `changes[k]` is the elements of the steps it covers and `steps[k]` the text of the last of them. None: one step
    per frame."""

    domain: str
    caption: str
    steps: list[str]
    frames: list[Image.Image]
    changes: list[int] = field(default_factory=list)
    process_steps: list[int] | None = None

    def change_between(self, i: int, j: int) -> int:
        """Ground-truth amount of change from frame i to frame j > i: the elements of steps i+1 .. j."""
        if not 0 <= i < j < len(self.frames):
            raise ValueError(f"frames {i} -> {j}: need 0 <= i < j < {len(self.frames)}")
        return sum(self.changes[i + 1 : j + 1])

    def steps_between(self, i: int, j: int) -> int:
        """Process steps from frame i to frame j > i: j - i for one step per frame, else those frames i+1 .. j cover."""
        if not 0 <= i < j < len(self.frames):
            raise ValueError(f"frames {i} -> {j}: need 0 <= i < j < {len(self.frames)}")
        return j - i if self.process_steps is None else sum(self.process_steps[i + 1 : j + 1])


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


def generate_sequence(domain: str, seed: int, size: int = 64, varied: bool = False) -> Sequence:
    """Render one sequence of `domain`; a pure function of (domain, seed, size, varied). Default: one step per frame;
    `varied`: the frames of a process of S steps, S in the domain's `STEP_RANGES` (`varied_sequence`)."""
    if varied:
        return varied_sequence(domain, seed, size)
    spec = spec_for(domain)
    canvas = Canvas(size)
    spec.background(canvas)
    caption = spec.render(random.Random(seed), canvas)
    if len(canvas.frames) != spec.frames:
        raise AssertionError(f"{domain} rendered {len(canvas.frames)} frames, expected {spec.frames}")
    return Sequence(domain, caption, canvas.steps, canvas.frames, canvas.changes)


def varied_sequence(domain: str, seed: int, size: int = 64) -> Sequence:
    """The domain's frame count of states of a process of S steps (`data/synthetic_process.py`), evenly spaced from
    the first state to the last: some transitions skip steps when S > frames, some frames repeat when S < frames."""
    spec = spec_for(domain)
    proc = render_process(spec.background, sv.ATOMS[domain], sv.STEP_RANGES[domain], seed, size)
    idx = frame_indices(len(proc.states), spec.frames)
    firsts = [0] + [k + 1 for k in idx[:-1]]  # the first step each frame covers (past its last one: none)
    changes = [sum(proc.changes[a : b + 1]) for a, b in zip(firsts, idx)]
    frames = [proc.states[k] for k in idx]
    return Sequence(domain, proc.caption, [proc.steps[k] for k in idx], frames, changes, covered_steps(idx))


def process_spread(domain: str, seed: int) -> list[float]:
    """The visual change of every step of the varied process of (domain, seed): the fraction of pixels that differ
    between consecutive states at 64 px, the first step's from the blank background."""
    spec = spec_for(domain)
    proc = render_process(spec.background, sv.ATOMS[domain], sv.STEP_RANGES[domain], seed, 64)
    return step_spread(blank_frame(domain, 64), proc.states)


def sequence_seed(seed: int, domain: str, index: int) -> int:
    """Stable per-sequence seed (crc32, not Python's per-process randomised hash())."""
    return zlib.crc32(f"{seed}/{domain}/{index}".encode())


def write_sequence(seq: Sequence, folder: Path) -> None:
    """Frames as 00.png, 01.png, ... and meta.json in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(seq.frames):
        frame.save(folder / f"{k:02d}.png")
    meta = {"caption": seq.caption, "steps": seq.steps}
    if seq.process_steps is not None:  # varied: the ground truth a grid alone does not show
        meta |= {"process_steps": seq.process_steps, "changes": seq.changes}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def write_corpus(
    out: Path,
    per_domain: int | Mapping[str, int] = 200,
    size: int = 64,
    seed: int = 0,
    domains: Iterable[str] | None = None,
    progress: bool = True,
    varied: bool = False,
) -> dict:
    """Write `per_domain` sequences of each domain under `out` (a mapping: that many of each domain it names, and
    only those); returns {domain: count}. Sequence i of a domain is the same whatever the others' counts. `varied`:
    processes of varying length (`generate_sequence`)."""
    if isinstance(per_domain, Mapping):
        counts = dict(per_domain)
    else:
        counts = {name: per_domain for name in (list(domains) if domains is not None else list(DOMAINS))}
    for name in counts:
        spec_for(name)
    out = Path(out)
    jobs = [(name, i) for name, n in counts.items() for i in range(n)]
    for name, i in progress_bar(jobs, desc="synth", unit="seq", enabled=progress):
        seq = generate_sequence(name, sequence_seed(seed, name, i), size, varied)
        write_sequence(seq, out / name / f"seq-{i:06d}")
    return counts


def contact_sheet(
    domains: Iterable[str] | None = None, per_row: int = 3, size: int = 64, seed: int = 0, varied: bool = False
) -> Image.Image:
    """One row per domain: its name, then `per_row` sequences (`varied`: of varying length) as serpentine grids."""
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
            seq = generate_sequence(name, sequence_seed(seed, name, k), size, varied)
            grid = frames_to_grid(seq.frames, *layout_for(len(seq.frames)))
            off = (cell - grid.width) // 2
            sheet.paste(grid, (label + k * (cell + gap) + off, y + off))
    return sheet
