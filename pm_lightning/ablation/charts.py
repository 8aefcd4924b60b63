"""Pictures of an ablation (PIL only): one bar chart per metric with the seed spread as error bars, and one picture
per row holding its grids at the fixed prompts and seed (the same for every row)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from pm_lightning.ablation.columns import column, format_value

BAR, GAP, HEIGHT, LEFT, TOP, BOTTOM = 56, 22, 220, 60, 34, 110


def bar_chart(metric: str, bars: list[tuple[str, float | None, float | None]]) -> Image.Image:
    """Bars of (label, mean, sd) with +-sd whiskers, value labels, the metric as title; missing means are gaps."""
    width = LEFT + len(bars) * (BAR + GAP) + GAP
    img = Image.new("RGB", (max(width, 320), TOP + HEIGHT + BOTTOM), "white")
    draw = ImageDraw.Draw(img)
    col = column(metric)
    draw.text((LEFT, 8), f"{col.header}  (mean +- sd over seeds{'; ' + col.better + ' is better' if col.better else ''})",
              fill="black")  # fmt: skip
    tops = [(m or 0) + (s or 0) for _, m, s in bars if m is not None]
    lows = [(m or 0) - (s or 0) for _, m, s in bars if m is not None]
    hi = max([0.0, *tops]) or 1.0
    lo = min([0.0, *lows])
    span = hi - lo or 1.0

    def y(v: float) -> float:
        return TOP + HEIGHT * (hi - v) / span

    draw.line([(LEFT - 4, y(0)), (width, y(0))], fill="black")
    draw.line([(LEFT - 4, TOP), (LEFT - 4, TOP + HEIGHT)], fill="black")
    draw.text((4, TOP - 6), format_value(metric, hi), fill="black")
    if lo < 0:
        draw.text((4, TOP + HEIGHT - 6), format_value(metric, lo), fill="black")
    for i, (label, mean, sd) in enumerate(bars):
        x0 = LEFT + GAP + i * (BAR + GAP)
        if mean is not None:
            draw.rectangle([x0, min(y(0), y(mean)), x0 + BAR, max(y(0), y(mean))], fill=(70, 110, 180))
            if sd:
                cx = x0 + BAR / 2
                draw.line([(cx, y(mean - sd)), (cx, y(mean + sd))], fill="black", width=2)
                for v in (mean - sd, mean + sd):
                    draw.line([(cx - 7, y(v)), (cx + 7, y(v))], fill="black", width=2)
            draw.text((x0, min(y(0), y(mean)) - 12), format_value(metric, mean), fill="black")
        for k, part in enumerate(_wrap(label, 11)[:6]):
            draw.text((x0, TOP + HEIGHT + 6 + 12 * k), part, fill="black")
    return img


def _wrap(text: str, width: int) -> list[str]:
    words, lines = text.replace("_", " ").split(), [""]
    for w in words:
        if lines[-1] and len(lines[-1]) + 1 + len(w) > width:
            lines.append(w)
        else:
            lines[-1] = f"{lines[-1]} {w}".strip()
    return lines


def row_picture(label: str, samples: list[tuple[str, Image.Image]], cell: int = 160, per_line: int = 9) -> Image.Image:
    """One row's pictures (its samples' grids or final sequences), `per_line` to a line (caption above each), its
    label as the title."""
    cols, lines = min(per_line, max(1, len(samples))), max(1, -(-len(samples) // per_line))
    img = Image.new("RGB", (cols * (cell + 8) + 8, 18 + lines * (cell + 18)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 4), label, fill="black")
    for i, (pid, grid) in enumerate(samples):
        x, y = 8 + (i % per_line) * (cell + 8), 18 + (i // per_line) * (cell + 18)
        draw.text((x, y), pid, fill="black")
        img.paste(grid.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC), (x, y + 14))
    return img
