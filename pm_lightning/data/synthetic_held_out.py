"""Renderers of the two synthetic held-out domains (origami, mosaic: never trained on), drawn like the training
domains' (`data/synthetic_renderers.py`) on a `Canvas`, one frame per step, from the caller's `random.Random`.
"""

from __future__ import annotations

import random

from pm_lightning.data.synthetic_canvas import COLOURS, ORDINALS, Canvas, shade

ORIGAMI = {  # four folds each: (step text, polygons, dark side of the paper?)
    "bird": [
        ("fold the body", [[(0.28, 0.62), (0.5, 0.47), (0.74, 0.62), (0.5, 0.74)]], False),
        (
            "fold the neck and head",
            [[(0.3, 0.62), (0.16, 0.26), (0.42, 0.56)], [(0.16, 0.26), (0.07, 0.34), (0.22, 0.32)]],
            True,
        ),
        ("fold the tail", [[(0.6, 0.56), (0.9, 0.26), (0.74, 0.64)]], True),
        ("fold the wing", [[(0.4, 0.56), (0.56, 0.1), (0.64, 0.58)]], False),
    ],
    "fish": [
        ("fold the body", [[(0.16, 0.5), (0.48, 0.28), (0.74, 0.5), (0.48, 0.72)]], False),
        ("fold the head", [[(0.16, 0.5), (0.36, 0.36), (0.36, 0.64)]], True),
        ("fold the tail", [[(0.72, 0.5), (0.92, 0.28), (0.92, 0.72)]], True),
        (
            "fold the fins",
            [[(0.44, 0.31), (0.56, 0.14), (0.62, 0.38)], [(0.44, 0.69), (0.56, 0.86), (0.62, 0.62)]],
            False,
        ),
    ],
    "fox": [
        ("fold the body", [[(0.42, 0.48), (0.84, 0.88), (0.3, 0.88)]], False),
        ("fold the head", [[(0.12, 0.3), (0.54, 0.3), (0.33, 0.62)]], False),
        ("fold the ears", [[(0.12, 0.3), (0.18, 0.1), (0.27, 0.3)], [(0.39, 0.3), (0.48, 0.1), (0.54, 0.3)]], True),
        ("fold the tail", [[(0.8, 0.88), (0.94, 0.46), (0.68, 0.72)]], True),
    ],
}


def render_origami(rng: random.Random, c: Canvas) -> str:
    """A paper animal folded piece by piece, light and dark sides of one paper colour."""
    animal = rng.choice(sorted(ORIGAMI))
    colour = rng.choice(["red", "orange", "yellow", "white", "pink", "blue", "green"])
    flip, dx, dy = rng.random() < 0.5, rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)
    move = lambda pts: [((1 - x if flip else x) + dx, y + dy) for x, y in pts]
    for text, polys, dark in ORIGAMI[animal]:
        for pts in polys:
            c.poly(move(pts), shade(COLOURS[colour], 0.7 if dark else 1.0), shade(COLOURS[colour], 0.5))
        c.step(text)
    return f"an origami {animal} folded from {colour} paper"


MOSAIC_PATTERNS = {
    "stripes": lambda i, j: j % 2,
    "rings": lambda i, j: min(i, j, 5 - i, 5 - j) % 2,
    "checks": lambda i, j: (i + j) % 2,
}


def mosaic_tiles(rng: random.Random) -> tuple[str, list[tuple[int, tuple, tuple]]]:
    """(caption, tiles): a 6x6 mosaic's draws, in this order (both the fixed-length renderer and the varied one,
    `data/synthetic_varied.py`, draw them here); tiles as (block k, box (x0, y0, x1, y1), rgb) in setting order, nine
    2x2 blocks, block order serpentine like the grid, each tile jittered."""
    a, b = rng.sample(["red", "orange", "yellow", "green", "blue", "purple", "white", "black"], 2)
    pattern = rng.choice(sorted(MOSAIC_PATTERNS))
    pitch = 0.88 / 6
    tiles = []
    for k in range(9):
        r = k // 3
        q = k % 3 if r % 2 == 0 else 2 - k % 3
        for j in (2 * r, 2 * r + 1):
            for i in (2 * q, 2 * q + 1):
                x, y = 0.06 + i * pitch + rng.uniform(-0.01, 0.01), 0.06 + j * pitch + rng.uniform(-0.01, 0.01)
                box = (x + 0.012, y + 0.012, x + pitch - 0.012, y + pitch - 0.012)
                tiles.append((k, box, COLOURS[(a, b)[MOSAIC_PATTERNS[pattern](i, j)]]))
    return f"a mosaic of {a} and {b} tiles in {pattern}", tiles


def render_mosaic(rng: random.Random, c: Canvas) -> str:
    """A 6x6 tile mosaic set in nine 2x2 blocks, block order serpentine like the grid."""
    caption, tiles = mosaic_tiles(rng)
    for n, (k, box, rgb) in enumerate(tiles):
        c.rect(*box, rgb)
        if n % 4 == 3:  # the block's fourth tile
            c.step(f"set the {ORDINALS[k]} block of tiles")
    return caption
