"""The nine synthetic domains as fine atoms for processes of varying length (`data/synthetic_process.py`).

Each `atoms_*` draws its choices from the sequence's rng like the fixed-length renderer of its domain
(`data/synthetic_renderers.py`, `data/synthetic_held_out.py`: same captions, same kinds of picture) and returns the
caption and the drawing as atoms in drawing order. Large fills come in bands and small details together, so that
every atom changes a comparable share of the picture (`data/synthetic_process.py` groups them into S steps of
about equal change). The fixed-length renderers are untouched: the default corpus does not depend on this module.
"""

from __future__ import annotations

import bisect
import math
import random

import numpy as np
from PIL import Image, ImageDraw

from pm_lightning.data.synthetic_canvas import COLOURS, ORDINALS, Canvas, a, count, shade
from pm_lightning.data.synthetic_held_out import ORIGAMI, mosaic_tiles
from pm_lightning.data.synthetic_process import Atom
from pm_lightning.data.synthetic_renderers import (
    CAKE_COLOURS,
    GROUNDS,
    LEGO_SHAPES,
    PENCILS,
    SKETCHES,
    SKIES,
    lego_choices,
    plush_details,
    sprite_mask,
)

STEP_RANGES: dict[str, tuple[int, int]] = {
    "lego": (5, 18),
    "painting": (5, 18),
    "fabric_toy": (2, 8),
    "cake": (2, 8),
    "sketch": (5, 18),
    "garden": (5, 18),
    "pixel_art": (2, 8),
    "origami": (2, 8),
    "mosaic": (5, 18),
}
"""Process steps S of a varied sequence, inclusive: about F/2 to 2F for F frames (9: 5..18, 4: 2..8)."""


def oval(cx, cy, rx, ry, n=32) -> list[tuple[float, float]]:
    """Polygon approximating an ellipse."""
    return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]


def bands(y0: float, y1: float, n: int) -> list[tuple[float, float]]:
    """`n` equal horizontal bands [y, y') covering y0 .. y1."""
    return [(y0 + (y1 - y0) * k / n, y0 + (y1 - y0) * (k + 1) / n) for k in range(n)]


def banded(text: str, points, fill, n: int, x_bands: bool = False, outline=None) -> list[Atom]:
    """A polygon filled in `n` bands of its bounding box (horizontal, or vertical with `x_bands`), one atom each;
    the last band also draws the `outline` (a colour, None: none) around the whole polygon."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs) + 0.01, min(ys), max(ys) + 0.01
    boxes = [(u, y0, v, y1) for u, v in bands(x0, x1, n)] if x_bands else [(x0, u, x1, v) for u, v in bands(y0, y1, n)]

    def band(c: Canvas, box: tuple, last: bool):
        c.poly_in(points, fill, box)
        if last and outline is not None:
            c.line([*points, points[0]], outline, 0.012)

    return [(text, lambda c, b=b, last=k == n - 1: band(c, b, last)) for k, b in enumerate(boxes)]


def atoms_lego(rng: random.Random) -> tuple[str, list[Atom]]:
    """Baseplate in three segments, then eight bricks bottom-up, each set as a left and a right half."""
    plate, brick, shape, dx = lego_choices(rng)
    cells = LEGO_SHAPES[shape]
    prgb, rgb = COLOURS[plate], COLOURS[brick]

    def segment(c: Canvas, x0: float):
        c.rect(x0, 0.84, x0 + 0.3, 0.93, prgb, shade(prgb, 0.6), 0.01)
        for k in range(3):
            c.rect(x0 + 0.03 + k * 0.1, 0.81, x0 + 0.07 + k * 0.1, 0.84, shade(prgb, 0.8))

    def half(c: Canvas, x: float, row: int):
        y1 = 0.84 - row * 0.14
        c.rect(x + 0.035, y1 - 0.175, x + 0.085, y1 - 0.13, rgb, shade(rgb, 0.6), 0.01)
        c.rect(x, y1 - 0.14, x + 0.1, y1, rgb, shade(rgb, 0.6), 0.015)

    atoms = [(f"lay the {plate} baseplate", lambda c, x0=x0: segment(c, x0)) for x0 in (0.05, 0.35, 0.65)]
    for k, (x, row) in enumerate(cells):
        for side, off in (("left", 0.0), ("right", 0.1)):
            text = f"set the {side} half of the {ORDINALS[k]} {brick} brick"
            atoms.append((text, lambda c, x=x + dx + off, row=row: half(c, x, row)))
    return f"a lego {shape} of eight {brick} bricks on a {plate} baseplate", atoms


def atoms_painting(rng: random.Random) -> tuple[str, list[Atom]]:
    """Sky in eight bands, ground in six, sun, two hills, clouds, path, one atom per tree, the flowers."""
    sky, ground = rng.choice(sorted(SKIES)), rng.choice(sorted(GROUNDS))
    trees, h, sx = rng.randint(1, 3), rng.uniform(0.5, 0.6), rng.choice([0.28, 0.72])
    grgb = GROUNDS[ground]
    atoms: list[Atom] = []
    for y0, y1 in bands(0.1, h, 8):
        atoms.append((f"paint the {sky} sky", lambda c, y0=y0, y1=y1: c.rect(0.1, y0, 0.9, y1, SKIES[sky])))
    for y0, y1 in bands(h, 0.9, 6):
        atoms.append((f"paint the {ground} ground", lambda c, y0=y0, y1=y1: c.rect(0.1, y0, 0.9, y1, grgb)))
    atoms.append(("add the yellow sun", lambda c: c.ellipse(sx, 0.24, 0.08, 0.08, (250, 225, 80))))
    for cx in (0.3, 0.68):  # the upper half of an ellipse on the horizon
        hill = [(cx + 0.2 * math.cos(t), h - 0.09 * math.sin(t)) for t in (math.pi * k / 16 for k in range(17))]
        atoms.append(("paint the hills", lambda c, hill=hill: c.poly_in(hill, shade(grgb, 0.75), (0.1, 0, 0.9, 1))))

    def clouds(c: Canvas):
        c.ellipse(1 - sx, 0.2, 0.1, 0.04, (250, 250, 250))
        c.ellipse(1 - sx + 0.05, 0.17, 0.06, 0.04, (250, 250, 250))

    atoms.append(("add the white clouds", clouds))
    atoms.append(("paint the path", lambda c: c.poly([(0.42, 0.9), (0.62, 0.9), (0.52, h)], (225, 205, 160))))

    def tree(c: Canvas, x: float):
        c.rect(x - 0.025, h - 0.12, x + 0.025, h + 0.08, (95, 60, 35))
        c.ellipse(x, h - 0.16, 0.09, 0.09, (35, 110, 50))

    for k, x in enumerate(sorted(rng.sample([0.21, 0.39, 0.62, 0.79], trees))):
        atoms.append((f"paint the {ORDINALS[k]} tree", lambda c, x=x: tree(c, x)))
    spots = [(rng.uniform(0.14, 0.86), rng.uniform(h + 0.1, 0.86)) for _ in range(7)]
    atoms.append(("dab the red flowers", lambda c: [c.ellipse(x, y, 0.03, 0.03, (230, 60, 60)) for x, y in spots]))
    return f"an oil painting of {count(trees, 'tree')} on {ground} fields under {a(sky)} sky", atoms


def atoms_fabric_toy(rng: random.Random) -> tuple[str, list[Atom]]:
    """Body in three bands, ears, head in two bands, arms, legs, then belly patch, stitching and eyes."""
    colour = rng.choice(["brown", "white", "gray", "pink", "yellow", "purple"])
    animal, eye = rng.choice(["bear", "bunny", "cat"]), rng.choice(["black", "blue"])
    rgb, dark = COLOURS[colour], shade(COLOURS[colour], 0.65)
    cx = rng.uniform(0.45, 0.55)
    atoms = banded(f"sew the {colour} body", oval(cx, 0.68, 0.2, 0.22), rgb, 3, outline=dark)

    def ears(c: Canvas):
        for s in (-1, 1):
            if animal == "bear":
                c.ellipse(cx + s * 0.14, 0.16, 0.07, 0.07, rgb, dark, 0.015)
            elif animal == "bunny":
                c.ellipse(cx + s * 0.08, 0.13, 0.045, 0.13, rgb, dark, 0.015)
            else:
                c.poly([(cx + s * 0.16, 0.3), (cx + s * 0.15, 0.06), (cx + s * 0.03, 0.2)], rgb, dark)

    atoms.append((f"sew on the {animal} ears", ears))
    atoms += banded("attach the head", oval(cx, 0.32, 0.17, 0.16), rgb, 2, outline=dark)
    for name, dx, y, rx, ry in (("arms", 0.22, 0.6, 0.07, 0.1), ("legs", 0.12, 0.88, 0.08, 0.06)):
        limbs = lambda c, dx=dx, y=y, rx=rx, ry=ry: [
            c.ellipse(cx + s * dx, y, rx, ry, rgb, dark, 0.015) for s in (-1, 1)
        ]
        atoms.append((f"sew on the {name}", limbs))

    atoms.append((f"add {eye} button eyes and stitching", lambda c: plush_details(c, cx, rgb, dark, eye)))
    return f"a {colour} plush {animal} with {eye} button eyes", atoms


def atoms_cake(rng: random.Random) -> tuple[str, list[Atom]]:
    """Plate in two halves, bottom layer in three bands, top layer in two, two frosting rings, the candles."""
    cake = rng.choice(sorted(CAKE_COLOURS))
    frost = rng.choice([k for k in ("white", "pink", "blue", "purple", "green") if k != cake])
    n = rng.randint(3, 6)
    rgb, frgb = CAKE_COLOURS[cake], shade(COLOURS[frost], 1.25)
    atoms = banded("set out the plate", oval(0.5, 0.85, 0.42, 0.07), (250, 250, 252), 2, True, (170, 170, 180))
    atoms += banded(f"set the {cake} bottom layer on the plate", [(0.18, 0.56), (0.82, 0.56), (0.82, 0.84),
                    (0.18, 0.84)], rgb, 3)  # fmt: skip
    atoms += banded(f"stack the {cake} top layer", [(0.26, 0.36), (0.74, 0.36), (0.74, 0.57), (0.26, 0.57)], rgb, 2)

    def frosting(c: Canvas, top: bool):
        if top:
            c.rect(0.24, 0.33, 0.76, 0.41, frgb)
        else:
            c.rect(0.16, 0.54, 0.84, 0.6, frgb)
        for k in range(6):
            if top:
                c.ellipse(0.28 + k * 0.088, 0.42, 0.03, 0.04, frgb)
            else:
                c.ellipse(0.21 + k * 0.116, 0.61, 0.035, 0.045, frgb)

    atoms += [(f"pour the {frost} frosting", lambda c, top=top: frosting(c, top)) for top in (True, False)]

    def candles(c: Canvas):
        for k in range(n):
            x = 0.32 + 0.36 * (k + 0.5) / n
            c.rect(x - 0.018, 0.19, x + 0.018, 0.33, (220, 50, 60))
            c.ellipse(x, 0.15, 0.02, 0.035, (250, 180, 40))

    atoms.append((f"light {count(n, 'candle')}", candles))
    return f"a {cake} cake with {frost} frosting and {count(n, 'candle')}", atoms


def polyline_pieces(points, length: float) -> list[list[tuple[float, float]]]:
    """A polyline cut into pieces of about `length` each (at least one), each starting where the last ended."""
    ends = [0.0]
    for p, q in zip(points, points[1:]):
        ends.append(ends[-1] + math.dist(p, q))
    n = max(1, round(ends[-1] / length))

    def at(t: float) -> tuple[float, float]:
        i = min(max(bisect.bisect_right(ends, t) - 1, 0), len(points) - 2)  # the segment holding t
        f = (t - ends[i]) / (ends[i + 1] - ends[i]) if ends[i + 1] > ends[i] else 0.0
        return (
            points[i][0] + (points[i + 1][0] - points[i][0]) * f,
            points[i][1] + (points[i + 1][1] - points[i][1]) * f,
        )

    cuts = [ends[-1] * k / n for k in range(n + 1)]
    return [[at(t0)] + [points[k] for k in range(len(points)) if t0 < ends[k] < t1] + [at(t1)]
            for t0, t1 in zip(cuts, cuts[1:])]  # fmt: skip


def atoms_sketch(rng: random.Random) -> tuple[str, list[Atom]]:
    """The five outline strokes in pieces of a quarter of the frame, then the four regions hatched in bands."""
    subject, pencil = rng.choice(sorted(SKETCHES)), rng.choice(sorted(PENCILS))
    s, dx, dy = rng.uniform(0.85, 1.0), rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.04)
    move = lambda pts: [(0.5 + (x - 0.5) * s + dx, 0.5 + (y - 0.5) * s + dy) for x, y in pts]
    strokes, regions = SKETCHES[subject]
    rgb = PENCILS[pencil]
    atoms: list[Atom] = []
    for name, pts in strokes:
        for piece in polyline_pieces(move(pts), 0.25):
            atoms.append((f"draw the {name}", lambda c, piece=piece: c.line(piece, rgb, 0.025)))
    for name, pts in regions:
        pts = move(pts)
        xs, ys = [x for x, _ in pts], [y for _, y in pts]
        area = (max(xs) - min(xs)) * (max(ys) - min(ys))
        for y0, y1 in bands(min(ys), max(ys) + 0.01, max(1, round(area / 0.05))):
            atoms.append((f"shade the {name}", lambda c, pts=pts, b=(0, y0, 1, y1): c.hatch(pts, rgb, box=b)))
    return f"a {pencil} pencil sketch of a {subject}", atoms


def atoms_garden(rng: random.Random) -> tuple[str, list[Atom]]:
    """Soil in nine strips, seeds and sprouts, stems, leaves, tall stems, buds, each flower's petals, the sun."""
    colour = rng.choice(["red", "pink", "purple", "orange", "white", "blue", "yellow"])
    n = rng.randint(3, 5)
    xs = [0.1 + 0.8 * (k + 0.5) / n + rng.uniform(-0.03, 0.03) for k in range(n)]
    tops = [rng.uniform(0.3, 0.4) for _ in range(n)]
    green, rgb = (40, 120, 45), COLOURS[colour]
    atoms: list[Atom] = [
        ("dig the soil bed", lambda c, u=u, v=v: c.rect(u, 0.72, v, 0.9, (115, 75, 45)))
        for u, v in bands(0.04, 0.96, 9)
    ]
    stems = lambda c, top: [c.line([(x, 0.73), (x, max(top, t))], green, 0.025) for x, t in zip(xs, tops)]

    def sprouts(c: Canvas):
        for x in xs:
            c.ellipse(x, 0.76, 0.02, 0.015, (235, 215, 150))
        stems(c, 0.66)

    def leaves(c: Canvas):
        for x in xs:
            c.ellipse(x - 0.04, 0.6, 0.04, 0.018, green)
            c.ellipse(x + 0.04, 0.56, 0.04, 0.018, green)

    def petals(c: Canvas, x: float, t: float):
        for petal in range(6):
            c.ellipse(x + 0.045 * math.cos(petal * math.pi / 3), t + 0.045 * math.sin(petal * math.pi / 3), 0.035,
                      0.035, rgb)  # fmt: skip
        c.ellipse(x, t, 0.025, 0.025, (120, 70, 20) if colour == "yellow" else (250, 210, 40))

    atoms += [
        (f"plant {count(n, 'seed')} and see them sprout", sprouts),
        ("the stems grow", lambda c: stems(c, 0.52)),
        ("the leaves open", leaves),
        ("the stems grow tall", lambda c: stems(c, 0.0)),
        (f"the {colour} buds form", lambda c: [c.ellipse(x, t, 0.045, 0.045, rgb) for x, t in zip(xs, tops)]),
    ]
    for k, (x, t) in enumerate(zip(xs, tops)):
        atoms.append((f"the {ORDINALS[k]} {colour} flower opens", lambda c, x=x, t=t: petals(c, x, t)))
    atoms.append(("the sun shines", lambda c: c.ellipse(0.88, 0.1, 0.09, 0.09, (255, 225, 60))))
    return f"a garden of {count(n, colour + ' flower')}", atoms


def atoms_pixel_art(rng: random.Random) -> tuple[str, list[Atom]]:
    """Outline in three runs of cells, fill in three, dark shading in two, the last with the white shine."""
    shape = rng.choice(["heart", "diamond", "circle", "cross"])
    colour = rng.choice(["red", "blue", "green", "yellow", "purple", "orange", "pink"])
    m = sprite_mask(shape, rng.uniform(0.9, 1.0))
    at = lambda j, i: 0 <= i < 10 and 0 <= j < 10 and m[j][i]
    edge = sorted(
        (j, i)
        for j in range(10)
        for i in range(10)
        if m[j][i] and not all(at(j + a, i + b) for a, b in ((0, 1), (1, 0), (0, -1), (-1, 0)))
    )
    body = [(j, i) for j in range(10) for i in range(10) if m[j][i] and (j, i) not in edge]
    lo = sorted(i + j for j, i in body)
    dark = [(j, i) for j, i in body if i + j >= lo[len(lo) * 2 // 3]]
    shine = [(j, i) for j, i in body if i + j <= lo[1]]
    cells = lambda c, cs, rgb: [c.rect(i / 10, j / 10, (i + 1) / 10, (j + 1) / 10, rgb) for j, i in cs]

    def rows(text: str, cs: list, rgb: tuple, n: int) -> list[Atom]:
        """`cs` in reading order, cut into `n` runs of about equal numbers of cells."""
        parts = [cs[len(cs) * k // n : len(cs) * (k + 1) // n] for k in range(n)]
        return [(text, lambda c, p=p: cells(c, p, rgb)) for p in parts if p]

    atoms = rows("draw the black outline", edge, COLOURS["black"], 3)
    atoms += rows(f"fill the {shape} with {colour}", body, COLOURS[colour], 3)
    atoms += rows("add the dark shading", dark, shade(COLOURS[colour], 0.6), 2)
    last = atoms[-1][1]  # the shine, a few cells, goes with the last of the shading
    atoms[-1] = ("add the white shine", lambda c: (last(c), cells(c, shine, COLOURS["white"])))
    return f"pixel art of {a(colour)} {shape}", atoms


def area_bands(pieces: list, n: int, res: int = 256) -> list[tuple[float, float]]:
    """`n` horizontal bands [y, y') holding about equal shares of the polygons' area (measured on a res-px mask)."""
    mask = Image.new("L", (res, res), 0)
    for pts in pieces:
        ImageDraw.Draw(mask).polygon([(x * res, y * res) for x, y in pts], fill=1)
    rows = np.cumsum(np.asarray(mask, dtype=np.float64).sum(axis=1))
    cuts = [0.0] + [int(np.searchsorted(rows, rows[-1] * k / n)) / res for k in range(1, n)] + [1.0]
    return list(zip(cuts, cuts[1:]))


def atoms_origami(rng: random.Random) -> tuple[str, list[Atom]]:
    """The four folds of a paper animal, each folded in bands of about equal area, more of them for a larger fold
    (about ten atoms in all), the crease lines with a fold's last band."""
    animal = rng.choice(sorted(ORIGAMI))
    colour = rng.choice(["red", "orange", "yellow", "white", "pink", "blue", "green"])
    flip, dx, dy = rng.random() < 0.5, rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)
    move = lambda pts: [((1 - x if flip else x) + dx, y + dy) for x, y in pts]
    edge = shade(COLOURS[colour], 0.5)

    def fold(c: Canvas, pieces: list, fill: tuple, box: tuple, last: bool):
        for pts in pieces:
            c.poly_in(pts, fill, box)
            if last:  # the crease lines once the whole fold is down
                c.line([*pts, pts[0]], edge, 0.008)

    folds = [([move(pts) for pts in polys], text, dark) for text, polys, dark in ORIGAMI[animal]]
    areas = [sum(polygon_area(pts) for pts in pieces) for pieces, _, _ in folds]
    atoms: list[Atom] = []
    for (pieces, text, dark), area in zip(folds, areas):
        fill, n = shade(COLOURS[colour], 0.7 if dark else 1.0), max(1, round(10 * area / sum(areas)))
        for k, (y0, y1) in enumerate(area_bands(pieces, n)):
            last = k == n - 1
            atoms.append((text, lambda c, p=pieces, f=fill, b=(0, y0, 1, y1), last=last: fold(c, p, f, b, last)))
    return f"an origami {animal} folded from {colour} paper", atoms


def polygon_area(pts) -> float:
    """Shoelace area of a simple polygon."""
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, [*pts[1:], pts[0]]))) / 2


def atoms_mosaic(rng: random.Random) -> tuple[str, list[Atom]]:
    """The 36 tiles one by one, in nine 2x2 blocks, block order serpentine like the grid."""
    caption, tiles = mosaic_tiles(rng)
    atoms: list[Atom] = [
        (f"set the {ORDINALS[k]} block of tiles", lambda c, box=box, rgb=rgb: c.rect(*box, rgb))
        for k, box, rgb in tiles
    ]
    return caption, atoms


ATOMS = {
    "lego": atoms_lego,
    "painting": atoms_painting,
    "fabric_toy": atoms_fabric_toy,
    "cake": atoms_cake,
    "sketch": atoms_sketch,
    "garden": atoms_garden,
    "pixel_art": atoms_pixel_art,
    "origami": atoms_origami,
    "mosaic": atoms_mosaic,
}
