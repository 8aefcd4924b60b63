"""Processes of varying length behind the synthetic grids (`generate_sequence(..., varied=True)`).

A varied-mode renderer (`data/synthetic_varied.py`) lists a domain's drawing as fine *atoms* in drawing order
(one brick half, one band of the sky, one tile: a step text and a function that draws it). A process of S steps
groups consecutive atoms into S steps of about equal visual change (`partition`: the fraction of pixels each atom
changes at 64 px, `atom_change`), so one drawing is a process of any length in the domain's range. The F frames
of the grid are the process states at evenly spaced step indices (`frame_indices`): with S > F some transitions
cover two or more steps (jumpy), with S < F some frames repeat the previous state (redundant), MakeAnything §3.5's
processes of varying length shown as 9 or 4 frames.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pm_lightning.data.synthetic_canvas import Canvas

Atom = tuple[str, Callable[[Canvas], None]]
"""(step text, draw): the smallest piece of a varied-mode drawing."""
SPREAD_SIZE = 64
"""Frame side at which the visual change of a step is measured (and the atoms weighed)."""


@dataclass
class Process:
    """S process steps: `states[k]` is the picture after step k, `changes[k]` the elements step k drew (the first
    step's include the background's, as in the fixed-length corpus), `steps[k]` its text."""

    caption: str
    steps: list[str]
    states: list[Image.Image]
    changes: list[int]


def pixel_change(a: Image.Image, b: Image.Image) -> float:
    """Fraction of pixels that differ (in any channel) between two same-size RGB pictures."""
    return float((np.asarray(a) != np.asarray(b)).any(axis=-1).mean())


def atom_change(background: Callable[[Canvas], None], atoms: list[Atom]) -> list[float]:
    """The fraction of pixels each atom changes at SPREAD_SIZE px, drawn in order on the background."""
    c = Canvas(SPREAD_SIZE)
    background(c)
    out = []
    for _text, draw in atoms:
        before = c.img.copy()
        draw(c)
        out.append(pixel_change(before, c.img))
    return out


def partition(weights: list[float], steps: int) -> list[int]:
    """Cut points [0, e1, ..., len(weights)] of `steps` consecutive non-empty groups whose sums are as even as
    possible (least squares around the mean, exact dynamic programme)."""
    n = len(weights)
    if not 1 <= steps <= n:
        raise ValueError(f"{steps} steps from {n} atoms")
    prefix = np.concatenate([[0.0], np.cumsum(weights)])
    mean = prefix[-1] / steps
    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(steps + 1)]
    back = [[0] * (n + 1) for _ in range(steps + 1)]
    cost[0][0] = 0.0
    for g in range(1, steps + 1):
        for end in range(g, n - (steps - g) + 1):
            for start in range(g - 1, end):
                val = cost[g - 1][start] + (prefix[end] - prefix[start] - mean) ** 2
                if val < cost[g][end]:
                    cost[g][end], back[g][end] = val, start
    cuts, end = [n], n
    for g in range(steps, 0, -1):
        end = back[g][end]
        cuts.append(end)
    return cuts[::-1]


def render_process(
    background: Callable[[Canvas], None],
    atoms_of: Callable[[random.Random], tuple[str, list[Atom]]],
    step_range: tuple[int, int],
    seed: int,
    size: int,
) -> Process:
    """The drawing of `atoms_of` as a process of S steps, S drawn from `step_range` (inclusive) by the sequence's
    own rng after its drawing; a step's text is its last atom's. A pure function of (domain, seed, size); the
    grouping is decided at SPREAD_SIZE px, so it is the same at every size."""
    rng = random.Random(seed)
    caption, atoms = atoms_of(rng)
    steps = rng.randint(*step_range)
    if len(atoms) < steps:
        raise AssertionError(f"{len(atoms)} atoms cannot make {steps} steps ({caption})")
    cuts = partition(atom_change(background, atoms), steps)
    c = Canvas(size)
    background(c)
    for start, end in zip(cuts, cuts[1:]):
        for _text, draw in atoms[start:end]:
            draw(c)
        c.step(atoms[end - 1][0])
    return Process(caption, c.steps, c.frames, c.changes)


def frame_indices(steps: int, frames: int) -> list[int]:
    """The process states shown as the grid's frames: round(j * (S - 1) / (F - 1)), halves up, for j < F; the first
    and the last state always."""
    if frames == 1:
        return [steps - 1]
    return [(2 * j * (steps - 1) + frames - 1) // (2 * (frames - 1)) for j in range(frames)]


def covered_steps(idx: list[int]) -> list[int]:
    """Process steps each frame covers: idx[0] + 1 for the first frame (every step up to its state, from the blank
    background), then idx[j] - idx[j - 1] (0: a repeated state). They sum to S."""
    return [idx[0] + 1] + [b - a for a, b in zip(idx, idx[1:])]


def step_spread(blank: Image.Image, states: list[Image.Image]) -> list[float]:
    """The visual change of every process step: pixel_change between consecutive states, the first from `blank`."""
    return [pixel_change(a, b) for a, b in zip([blank, *states], states)]
