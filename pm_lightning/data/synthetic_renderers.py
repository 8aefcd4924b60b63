"""Renderers of the seven synthetic training domains, drawn on a `Canvas` (`data/synthetic_canvas.py`) in
relative coordinates, one frame per step. Colours, shapes, counts and positions come from the caller's
`random.Random`, and the caption names the ones that change what is drawn. The held-out domains:
`data/synthetic_held_out.py`.
"""

from __future__ import annotations

import math
import random

from pm_lightning.data.synthetic_canvas import COLOURS, ORDINALS, Canvas, a, count, shade

LEGO_SHAPES = {
    "tower": [(0.3, 0), (0.5, 0), (0.3, 1), (0.5, 1), (0.3, 2), (0.5, 2), (0.3, 3), (0.5, 3)],
    "wall": [(0.1, 0), (0.3, 0), (0.5, 0), (0.7, 0), (0.1, 1), (0.3, 1), (0.5, 1), (0.7, 1)],
    "pyramid": [(0.1, 0), (0.3, 0), (0.5, 0), (0.7, 0), (0.2, 1), (0.4, 1), (0.6, 1), (0.4, 2)],
    "staircase": [(0.1, 0), (0.3, 0), (0.5, 0), (0.7, 0), (0.3, 1), (0.5, 1), (0.7, 1), (0.7, 2)],
}


def lego_brick(c: Canvas, x: float, row: int, rgb: tuple):
    """One 2-stud brick of width 0.2 standing on row `row` above the baseplate."""
    y1 = 0.84 - row * 0.14
    for sx in (x + 0.035, x + 0.115):
        c.rect(sx, y1 - 0.175, sx + 0.05, y1 - 0.13, rgb, shade(rgb, 0.6), 0.01)
    c.rect(x, y1 - 0.14, x + 0.2, y1, rgb, shade(rgb, 0.6), 0.015)


def lego_choices(rng: random.Random) -> tuple[str, str, str, float]:
    """(plate colour, brick colour, shape, horizontal shift): a lego build's draws, in this order (both the
    fixed-length renderer and the varied one, `data/synthetic_varied.py`, draw them here)."""
    plate = rng.choice(["green", "gray", "blue"])
    brick = rng.choice([k for k in ("red", "yellow", "blue", "orange", "green", "purple") if k != plate])
    shape = rng.choice(sorted(LEGO_SHAPES))
    cells = LEGO_SHAPES[shape]
    lo, hi = min(x for x, _ in cells), max(x for x, _ in cells) + 0.2
    dx = rng.choice([v for v in (-0.1, 0.0, 0.1) if lo + v >= 0.05 and hi + v <= 0.95])
    return plate, brick, shape, dx


def render_lego(rng: random.Random, c: Canvas) -> str:
    """Baseplate, then eight bricks bottom-up into a tower, wall, pyramid or staircase."""
    plate, brick, shape, dx = lego_choices(rng)
    cells = LEGO_SHAPES[shape]
    prgb = COLOURS[plate]
    c.rect(0.05, 0.84, 0.95, 0.93, prgb, shade(prgb, 0.6), 0.01)
    for k in range(9):
        c.rect(0.08 + k * 0.1, 0.81, 0.12 + k * 0.1, 0.84, shade(prgb, 0.8))
    c.step(f"lay the {plate} baseplate")
    for k, (x, row) in enumerate(cells):
        lego_brick(c, x + dx, row, COLOURS[brick])
        c.step(f"place the {ORDINALS[k]} {brick} brick")
    return f"a lego {shape} of eight {brick} bricks on a {plate} baseplate"


SKIES = {"blue": (110, 170, 235), "orange": (245, 165, 85), "pink": (240, 165, 195), "purple": (150, 125, 205)}
GROUNDS = {"green": (90, 165, 80), "yellow": (215, 195, 95), "brown": (150, 110, 70)}


def render_painting(rng: random.Random, c: Canvas) -> str:
    """A landscape painted back to front: sky, ground, sun, hills, clouds, path, trees, flowers."""
    sky, ground = rng.choice(sorted(SKIES)), rng.choice(sorted(GROUNDS))
    trees, h, sx = rng.randint(1, 3), rng.uniform(0.5, 0.6), rng.choice([0.28, 0.72])
    c.rect(0.1, 0.1, 0.9, h, SKIES[sky])
    c.step(f"paint the {sky} sky")
    c.rect(0.1, h, 0.9, 0.9, GROUNDS[ground])
    c.step(f"paint the {ground} ground")
    c.ellipse(sx, 0.24, 0.08, 0.08, (250, 225, 80))
    c.step("add the yellow sun")
    for cx in (0.3, 0.68):
        c.ellipse(cx, h, 0.2, 0.09, shade(GROUNDS[ground], 0.75))
    c.rect(0.1, h, 0.9, h + 0.1, GROUNDS[ground])  # hills show only above the horizon
    c.step("paint the hills")
    cx = 1 - sx
    c.ellipse(cx, 0.2, 0.1, 0.04, (250, 250, 250))
    c.ellipse(cx + 0.05, 0.17, 0.06, 0.04, (250, 250, 250))
    c.step("add the white clouds")
    c.poly([(0.42, 0.9), (0.62, 0.9), (0.52, h)], (225, 205, 160))
    c.step("paint the path")
    xs = sorted(rng.sample([0.21, 0.39, 0.62, 0.79], trees))  # slots clear of the path and each other
    for x in xs:
        c.rect(x - 0.025, h - 0.12, x + 0.025, h + 0.08, (95, 60, 35))
    c.step(f"paint {count(trees, 'tree trunk')}")
    for x in xs:
        c.ellipse(x, h - 0.16, 0.09, 0.09, (35, 110, 50))
    c.step("paint the tree crowns")
    for _k in range(7):
        fx, fy = rng.uniform(0.14, 0.86), rng.uniform(h + 0.1, 0.86)
        c.ellipse(fx, fy, 0.02, 0.02, (230, 60, 60))
    c.step("dab the red flowers")
    return f"an oil painting of {count(trees, 'tree')} on {ground} fields under {a(sky)} sky"


def plush_details(c: Canvas, cx: float, rgb: tuple, dark: tuple, eye: str) -> None:
    """A plush animal's last touches: the belly patch, its stitching, button eyes and nose."""
    c.ellipse(cx, 0.7, 0.1, 0.12, shade(rgb, 1.4))
    for k in range(4):
        c.line([(cx, 0.6 + k * 0.055), (cx, 0.63 + k * 0.055)], dark, 0.015)
    for s in (-1, 1):
        c.ellipse(cx + s * 0.065, 0.3, 0.032, 0.032, COLOURS[eye])
    c.ellipse(cx, 0.38, 0.025, 0.02, (60, 30, 30))


def render_fabric_toy(rng: random.Random, c: Canvas) -> str:
    """A plush animal sewn body, head and ears, limbs, then eyes and stitching."""
    colour = rng.choice(["brown", "white", "gray", "pink", "yellow", "purple"])
    animal, eye = rng.choice(["bear", "bunny", "cat"]), rng.choice(["black", "blue"])
    rgb, dark = COLOURS[colour], shade(COLOURS[colour], 0.65)
    cx = rng.uniform(0.45, 0.55)
    c.ellipse(cx, 0.68, 0.2, 0.22, rgb, dark, 0.015)
    c.step(f"sew the {colour} body")
    if animal == "bear":
        for s in (-1, 1):
            c.ellipse(cx + s * 0.14, 0.16, 0.07, 0.07, rgb, dark, 0.015)
    elif animal == "bunny":
        for s in (-1, 1):
            c.ellipse(cx + s * 0.08, 0.13, 0.045, 0.13, rgb, dark, 0.015)
    else:
        for s in (-1, 1):
            c.poly([(cx + s * 0.16, 0.3), (cx + s * 0.15, 0.06), (cx + s * 0.03, 0.2)], rgb, dark)
    c.ellipse(cx, 0.32, 0.17, 0.16, rgb, dark, 0.015)
    c.step(f"attach the head and {animal} ears")
    for s in (-1, 1):
        c.ellipse(cx + s * 0.22, 0.6, 0.07, 0.1, rgb, dark, 0.015)
        c.ellipse(cx + s * 0.12, 0.88, 0.08, 0.06, rgb, dark, 0.015)
    c.step("sew on the arms and legs")
    plush_details(c, cx, rgb, dark, eye)
    c.step(f"add {eye} button eyes and stitching")
    return f"a {colour} plush {animal} with {eye} button eyes"


CAKE_COLOURS = {"brown": (120, 70, 40), "pink": (235, 150, 170), "yellow": (240, 210, 120), "white": (245, 240, 230)}


def render_cake(rng: random.Random, c: Canvas) -> str:
    """A layer cake: bottom layer on a plate, top layer, frosting, candles."""
    cake = rng.choice(sorted(CAKE_COLOURS))
    frost = rng.choice([k for k in ("white", "pink", "blue", "purple", "green") if k != cake])
    n = rng.randint(2, 5)
    rgb, frgb = CAKE_COLOURS[cake], shade(COLOURS[frost], 1.25)
    c.ellipse(0.5, 0.85, 0.42, 0.07, (250, 250, 252), (170, 170, 180), 0.01)
    c.rect(0.18, 0.56, 0.82, 0.84, rgb, shade(rgb, 0.7), 0.012)
    c.step(f"set the {cake} bottom layer on the plate")
    c.rect(0.26, 0.36, 0.74, 0.57, rgb, shade(rgb, 0.7), 0.012)
    c.step(f"stack the {cake} top layer")
    c.rect(0.24, 0.33, 0.76, 0.41, frgb)
    c.rect(0.16, 0.54, 0.84, 0.6, frgb)
    for k in range(6):
        c.ellipse(0.28 + k * 0.088, 0.42, 0.03, 0.04, frgb)
        c.ellipse(0.21 + k * 0.116, 0.61, 0.035, 0.045, frgb)
    c.step(f"pour the {frost} frosting")
    for k in range(n):
        x = 0.32 + 0.36 * (k + 0.5) / n
        c.rect(x - 0.018, 0.19, x + 0.018, 0.33, (220, 50, 60))
        c.ellipse(x, 0.15, 0.02, 0.035, (250, 180, 40))
    c.step(f"light {count(n, 'candle')}")
    return f"a {cake} cake with {frost} frosting and {count(n, 'candle')}"


def ring(cx, cy, r, n=24) -> list:
    """Closed polyline approximating a circle."""
    return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n + 1)]


# Five outline strokes, then four hatched regions, per subject (relative to a 0..1 box).
SKETCHES = {
    "house": (
        [
            ("walls", [(0.25, 0.5), (0.25, 0.85), (0.75, 0.85), (0.75, 0.5), (0.25, 0.5)]),
            ("roof", [(0.18, 0.5), (0.5, 0.2), (0.82, 0.5)]),
            ("door", [(0.43, 0.85), (0.43, 0.66), (0.57, 0.66), (0.57, 0.85)]),
            ("window", [(0.29, 0.56), (0.38, 0.56), (0.38, 0.64), (0.29, 0.64), (0.29, 0.56)]),
            ("chimney", [(0.62, 0.39), (0.62, 0.24), (0.7, 0.24), (0.7, 0.46)]),
        ],
        [
            ("roof", [(0.18, 0.5), (0.5, 0.2), (0.82, 0.5)]),
            ("door", [(0.43, 0.85), (0.43, 0.66), (0.57, 0.66), (0.57, 0.85)]),
            ("right wall", [(0.6, 0.5), (0.75, 0.5), (0.75, 0.85), (0.6, 0.85)]),
            ("ground", [(0.08, 0.86), (0.92, 0.86), (0.92, 0.93), (0.08, 0.93)]),
        ],
    ),
    "boat": (
        [
            ("hull", [(0.15, 0.6), (0.85, 0.6), (0.72, 0.78), (0.28, 0.78), (0.15, 0.6)]),
            ("mast", [(0.5, 0.6), (0.5, 0.13)]),
            ("big sail", [(0.52, 0.17), (0.8, 0.56), (0.52, 0.56), (0.52, 0.17)]),
            ("small sail", [(0.48, 0.25), (0.48, 0.56), (0.26, 0.56), (0.48, 0.25)]),
            ("waves", [(0.05, 0.86), (0.2, 0.82), (0.35, 0.86), (0.5, 0.82), (0.65, 0.86), (0.8, 0.82), (0.95, 0.86)]),
        ],
        [
            ("hull", [(0.15, 0.6), (0.85, 0.6), (0.72, 0.78), (0.28, 0.78)]),
            ("big sail", [(0.52, 0.17), (0.8, 0.56), (0.52, 0.56)]),
            ("small sail", [(0.48, 0.25), (0.48, 0.56), (0.26, 0.56)]),
            ("water", [(0.05, 0.86), (0.95, 0.86), (0.95, 0.95), (0.05, 0.95)]),
        ],
    ),
    "tree": (
        [
            ("trunk", [(0.45, 0.88), (0.46, 0.58), (0.54, 0.58), (0.55, 0.88)]),
            ("crown", ring(0.5, 0.38, 0.24)),
            ("branches", [(0.4, 0.42), (0.5, 0.55), (0.62, 0.36)]),
            ("ground", [(0.1, 0.88), (0.9, 0.88)]),
            ("sun", ring(0.84, 0.14, 0.08, 16)),
        ],
        [
            ("crown", ring(0.5, 0.38, 0.24)),
            ("trunk", [(0.45, 0.88), (0.46, 0.58), (0.54, 0.58), (0.55, 0.88)]),
            ("ground", [(0.1, 0.88), (0.9, 0.88), (0.9, 0.95), (0.1, 0.95)]),
            ("sun", ring(0.84, 0.14, 0.08, 16)),
        ],
    ),
}
PENCILS = {"gray": (95, 95, 100), "black": (25, 25, 25), "blue": (40, 70, 170), "red": (180, 40, 40)}


def render_sketch(rng: random.Random, c: Canvas) -> str:
    """A pencil drawing: five outline strokes, then four regions hatched."""
    subject, pencil = rng.choice(sorted(SKETCHES)), rng.choice(sorted(PENCILS))
    s, dx, dy = rng.uniform(0.85, 1.0), rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.04)
    move = lambda pts: [(0.5 + (x - 0.5) * s + dx, 0.5 + (y - 0.5) * s + dy) for x, y in pts]
    strokes, regions = SKETCHES[subject]
    for name, pts in strokes:
        c.line(move(pts), PENCILS[pencil], 0.025)
        c.step(f"draw the {name}")
    for name, pts in regions:
        c.hatch(move(pts), PENCILS[pencil])
        c.step(f"shade the {name}")
    return f"a {pencil} pencil sketch of a {subject}"


def render_garden(rng: random.Random, c: Canvas) -> str:
    """A flower bed growing: soil, seeds, sprouts, stems, leaves, buds, petals, sun."""
    colour = rng.choice(["red", "pink", "purple", "orange", "white", "blue", "yellow"])
    n = rng.randint(3, 5)
    xs = [0.1 + 0.8 * (k + 0.5) / n + rng.uniform(-0.03, 0.03) for k in range(n)]
    tops = [rng.uniform(0.3, 0.4) for _ in range(n)]
    green, rgb = (40, 120, 45), COLOURS[colour]
    c.rect(0.04, 0.72, 0.96, 0.9, (115, 75, 45))
    c.step("dig the soil bed")
    for x in xs:
        c.ellipse(x, 0.76, 0.02, 0.015, (235, 215, 150))
    c.step(f"plant {count(n, 'seed')}")
    stems = lambda top: [c.line([(x, 0.73), (x, max(top, t))], green, 0.025) for x, t in zip(xs, tops)]
    stems(0.66)
    c.step("the sprouts appear")
    stems(0.52)
    c.step("the stems grow")
    for x in xs:
        c.ellipse(x - 0.04, 0.6, 0.04, 0.018, green)
        c.ellipse(x + 0.04, 0.56, 0.04, 0.018, green)
    c.step("the leaves open")
    stems(0.0)
    c.step("the stems grow tall")
    for x, t in zip(xs, tops):
        c.ellipse(x, t, 0.045, 0.045, rgb)  # the flower colour, so the opened flower keeps the bud
    c.step(f"the {colour} buds form")
    for x, t in zip(xs, tops):
        for petal in range(6):
            c.ellipse(
                x + 0.045 * math.cos(petal * math.pi / 3), t + 0.045 * math.sin(petal * math.pi / 3), 0.035, 0.035, rgb
            )
        c.ellipse(x, t, 0.025, 0.025, (120, 70, 20) if colour == "yellow" else (250, 210, 40))
    c.step(f"the {colour} petals open")
    c.ellipse(0.88, 0.1, 0.09, 0.09, (255, 225, 60))
    c.step("the sun shines")
    return f"a garden of {count(n, colour + ' flower')}"


HEART = (
    "..........",
    ".###..###.",
    "##########",
    "##########",
    "##########",
    ".########.",
    "..######..",
    "...####...",
    "....##....",
    "..........",
)


def sprite_mask(shape: str, r: float) -> list[list[bool]]:
    """10x10 cells inside a heart, diamond, circle or cross of relative radius r."""

    def inside(u: float, v: float) -> bool:
        if shape == "circle":
            return u * u + v * v <= r * r
        if shape == "diamond":
            return abs(u) + abs(v) <= r * 1.05
        if shape == "cross":
            return max(abs(u), abs(v)) <= r and min(abs(u), abs(v)) <= r * 0.45
        return HEART[round(v * 4.5 + 4.5)][round(u * 4.5 + 4.5)] == "#"  # too small for a curve

    return [[inside((i - 4.5) / 4.5, (j - 4.5) / 4.5) for i in range(10)] for j in range(10)]


def render_pixel_art(rng: random.Random, c: Canvas) -> str:
    """A 10x10 sprite: black outline, colour fill, dark shading, white shine."""
    shape = rng.choice(["heart", "diamond", "circle", "cross"])
    colour = rng.choice(["red", "blue", "green", "yellow", "purple", "orange", "pink"])
    m = sprite_mask(shape, rng.uniform(0.9, 1.0))
    at = lambda j, i: 0 <= i < 10 and 0 <= j < 10 and m[j][i]
    edge = {
        (j, i)
        for j in range(10)
        for i in range(10)
        if m[j][i] and not all(at(j + a, i + b) for a, b in ((0, 1), (1, 0), (0, -1), (-1, 0)))
    }
    body = [(j, i) for j in range(10) for i in range(10) if m[j][i] and (j, i) not in edge]
    cell = lambda cells, rgb: [c.rect(i / 10, j / 10, (i + 1) / 10, (j + 1) / 10, rgb) for j, i in cells]
    cell(sorted(edge), COLOURS["black"])
    c.step("draw the black outline")
    cell(body, COLOURS[colour])
    c.step(f"fill the {shape} with {colour}")
    lo = sorted(i + j for j, i in body)
    cell([(j, i) for j, i in body if i + j >= lo[len(lo) * 2 // 3]], shade(COLOURS[colour], 0.6))
    c.step("add the dark shading")
    cell([(j, i) for j, i in body if i + j <= lo[1]], COLOURS["white"])
    c.step("add the white shine")
    return f"pixel art of {a(colour)} {shape}"
