"""The drawing surface of the synthetic procedural domains (`data/synthetic_renderers.py`,
`data/synthetic_held_out.py`) and the words their captions use.

A renderer draws on a `Canvas` in relative coordinates one step at a time and snapshots a frame after every
step, so every frame is the previous one plus (or painted over by) the new step. The canvas counts the
elements (drawing primitives: boxes, ellipses, polygons, lines, hatchings) each step adds or paints over:
the ground-truth amount of change between frames (`Canvas.changes`).
"""

from __future__ import annotations

from PIL import Image, ImageChops, ImageDraw

COLOURS = {
    "red": (215, 40, 40),
    "orange": (240, 135, 30),
    "yellow": (245, 205, 35),
    "green": (55, 160, 65),
    "blue": (45, 95, 215),
    "purple": (135, 60, 180),
    "pink": (240, 125, 175),
    "brown": (130, 80, 40),
    "white": (245, 245, 240),
    "black": (25, 25, 25),
    "gray": (130, 130, 135),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")


def shade(rgb: tuple, f: float) -> tuple:
    """Darken (f < 1) or lighten towards white (f > 1) a colour."""
    if f <= 1:
        return tuple(int(v * f) for v in rgb)
    return tuple(int(v + (255 - v) * (f - 1)) for v in rgb)


class Canvas:
    """An RGB frame drawn in relative coordinates (0..1) that records one frame per step."""

    def __init__(self, size: int, background: tuple = (255, 255, 255)):
        self.size = size
        self.img = Image.new("RGB", (size, size), background)
        self.draw = ImageDraw.Draw(self.img)
        self.frames: list[Image.Image] = []
        self.steps: list[str] = []
        self.changes: list[int] = []  # elements drawn by each step
        self._elements = 0

    def xy(self, points) -> list[tuple[int, int]]:
        """Relative points -> integer pixel points (rounded once, so every size is exact)."""
        return [(round(x * self.size), round(y * self.size)) for x, y in points]

    def w(self, width: float) -> int:
        """Relative line width -> pixels, never thinner than one pixel."""
        return max(1, round(width * self.size))

    def rect(self, x0, y0, x1, y1, fill, outline=None, width=0.0):
        """Axis-aligned box; x1/y1 exclusive so adjacent boxes tile without overlap."""
        self._elements += 1
        (a, b), (c, d) = self.xy([(x0, y0), (x1, y1)])
        self.draw.rectangle(
            [a, b, max(a, c - 1), max(b, d - 1)], fill=fill, outline=outline, width=self.w(width) if outline else 0
        )

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width=0.0):
        """Ellipse by centre and radii."""
        self._elements += 1
        (a, b), (c, d) = self.xy([(cx - rx, cy - ry), (cx + rx, cy + ry)])
        if c - a < 2 or d - b < 2:  # PIL draws nothing for a 1-px ellipse; keep small things visible
            self.draw.rectangle([a, b, max(a, c - 1), max(b, d - 1)], fill=fill or outline)
            return
        self.draw.ellipse(
            [a, b, max(a, c - 1), max(b, d - 1)], fill=fill, outline=outline, width=self.w(width) if outline else 1
        )

    def poly(self, points, fill, outline=None):
        """Filled polygon."""
        self._elements += 1
        self.draw.polygon(self.xy(points), fill=fill, outline=outline)

    def line(self, points, fill, width=0.02):
        """Polyline."""
        self._elements += 1
        self.draw.line(self.xy(points), fill=fill, width=self.w(width), joint="curve")

    def hatch(self, points, fill, spacing=0.05, width=0.012, box=None):
        """Diagonal hatching clipped to a polygon (pencil shading), and to the box (x0, y0, x1, y1) when given."""
        self._elements += 1
        layer = self.img.copy()
        d = ImageDraw.Draw(layer)
        spacing = max(spacing, 4 * self.w(width) / self.size)  # 1-px lines at small sizes: keep the density
        for k in range(-int(1 / spacing) - 1, int(1 / spacing) + 2):
            x = k * spacing
            d.line(self.xy([(x, 1.0), (x + 1.0, 0.0)]), fill=fill, width=self.w(width))
        mask = Image.new("L", self.img.size, 0)
        ImageDraw.Draw(mask).polygon(self.xy(points), fill=255)
        self.img.paste(layer, mask=self._clip(mask, box))  # in place, so self.draw keeps drawing on it

    def poly_in(self, points, fill, box):
        """Filled polygon clipped to the box (x0, y0, x1, y1): one band of a large fill."""
        self._elements += 1
        mask = Image.new("L", self.img.size, 0)
        ImageDraw.Draw(mask).polygon(self.xy(points), fill=255)
        self.img.paste(fill, (0, 0, self.size, self.size), mask=self._clip(mask, box))

    def _clip(self, mask: Image.Image, box) -> Image.Image:
        """`mask` with everything outside the relative box (x0, y0, x1, y1; exclusive ends) cleared; None: as is."""
        if box is None:
            return mask
        (a, b), (c, d) = self.xy([box[:2], box[2:]])
        keep = Image.new("L", mask.size, 0)
        if c > a and d > b:
            ImageDraw.Draw(keep).rectangle([a, b, c - 1, d - 1], fill=255)
        return ImageChops.darker(mask, keep)

    def step(self, text: str):
        """Record the current picture as the frame that follows `text`."""
        self.frames.append(self.img.copy())
        self.steps.append(text)
        self.changes.append(self._elements)
        self._elements = 0


def a(word: str) -> str:
    """'a red', 'an orange'."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def count(n: int, noun: str) -> str:
    """'one tree', 'three trees'."""
    return f"{NUMBERS[n]} {noun}{'' if n == 1 else 's'}"
