"""Writing one generated sample: grid.png, frames/00.png ..., sequence.gif, report.json, index.html.

The folder is what `python -m pm_lightning.evaluate` reads (report.json holds `prompt` and `domain`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from diffusers.utils import export_to_gif, make_image_grid
from PIL import Image


def write_frames(folder: Path, frames: Sequence[Image.Image]) -> list[str]:
    """frames/00.png, 01.png, ... (two digits, three from 100 frames on); returns the relative paths."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # a rerun into the same folder must not leave stale frames behind
        old.unlink()
    width = max(2, len(str(len(frames) - 1)))
    names = []
    for k, frame in enumerate(frames):
        name = f"{k:0{width}d}.png"
        frame.convert("RGB").save(folder / name)
        names.append(f"{folder.name}/{name}")
    return names


def write_gif(path: Path, frames: Sequence[Image.Image], fps: int = 2) -> None:
    """An endlessly looping GIF of the frames (diffusers' `export_to_gif`), all at the first frame's size."""
    size = frames[0].size
    images = [
        f.convert("RGB") if f.size == size else f.convert("RGB").resize(size, Image.Resampling.BICUBIC) for f in frames
    ]
    export_to_gif(images, str(path), fps=fps)


def strip_html(report: dict, frame_paths: Sequence[str], captions: Sequence[str]) -> str:
    """A self-contained page: the sequence as a captioned strip, the GIF, the grid, the adaptive decisions."""
    esc = html.escape
    figures = "\n".join(
        f'<figure><img src="{esc(p)}" alt="frame {k}"><figcaption><b>{k}</b> {esc(c)}</figcaption></figure>'
        for k, (p, c) in enumerate(zip(frame_paths, captions))
    )
    rows = []
    for rnd in (report.get("adaptive") or {}).get("rounds", []):
        t = rnd["thresholds"]
        for d in rnd["decisions"]:
            what = f"insert {d['n']}" if d["action"] == "insert" else f"delete frame {d['frame']}"
            rows.append(
                f"<tr><td>{rnd['round']}</td><td>{d['pair']}-{d['pair'] + 1}</td><td>{esc(what)}</td>"
                f"<td>{d['delta']:.4f}</td><td>{d['threshold']:.4f}</td><td>{t['mu']:.4f} / {t['sigma']:.4f}</td>"
                f"<td>{'yes' if d['applied'] else 'no: ' + esc(d['reason'])}</td></tr>"
            )
    table = (
        (
            "<h2>Adaptive decisions</h2><table><tr><th>round</th><th>pair</th><th>edit</th><th>Delta</th>"
            "<th>threshold</th><th>mu / sigma</th><th>applied</th></tr>" + "".join(rows) + "</table>"
        )
        if rows
        else ""
    )
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.get("notes", []))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(report.get("prompt", ""))}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.strip {{ display: flex; gap: 8px; overflow-x: auto; align-items: flex-start; }}
figure {{ margin: 0; width: 160px; flex: none; }}
figure img {{ width: 160px; image-rendering: pixelated; border: 1px solid #ccc; }}
figcaption {{ font-size: 12px; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style></head><body>
<h1>{esc(report.get("prompt", ""))}</h1>
<p>domain <b>{esc(str(report.get("domain", "")))}</b>, seed {esc(str(report.get("seed", "")))}, {len(frame_paths)} frames</p>
<ul>{notes}</ul>
<div class="strip">
{figures}
</div>
<h2>Sequence</h2><img src="sequence.gif" width="256" style="image-rendering: pixelated">
<h2>Stage-1 grid</h2><img src="grid.png" width="384" style="image-rendering: pixelated">
{table}
</body></html>
"""


def write_sample(
    out: str | Path, grid: Image.Image | None, frames: Sequence[Image.Image], captions: Sequence[str], report: dict
) -> Path:
    """Write every output of one sample into `out`; returns the folder.

    Args:
        out: the sample folder (created).
        grid: the stage-1 grid (None: the frames are pasted side by side as the grid).
        frames: the final sequence in order.
        captions: one caption per frame for the HTML strip.
        report: JSON-ready dict (prompt, domain, seed, settings, adaptive report ...).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not frames:
        raise ValueError("no frames to write")
    if grid is None:
        size = frames[0].size
        grid = make_image_grid([f.convert("RGB").resize(size) for f in frames], rows=1, cols=len(frames))  # a strip
    grid.convert("RGB").save(out / "grid.png")
    paths = write_frames(out / "frames", frames)
    write_gif(out / "sequence.gif", frames)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "index.html").write_text(strip_html(report, paths, captions))
    return out
