"""Scoring a folder of generated samples: per-sample scores, the per-domain table (markdown + JSON).

A sample folder holds `grid.png`, `frames/` (00.png, 01.png, ...) and `report.json` with at least `prompt`
and `domain`, optionally `ground_truth` (a folder of true frames, relative to the sample folder or absolute)
and `steps`. The metrics, their columns and formats: `eval/metric_registry.py`. Definitions: docs/EVALUATION.md.

A sample whose report records applied adaptive edits (`adaptive.rounds[].decisions[]`: stage 2's insertions and
deletions) is scored on its final sequence: Align on `eval/final_grid.align_grid` (the final frames in the stage-1
layout, `settings.rows` / `settings.cols`), the judge on `final_grid.square_grid`; the per-frame metrics read
`frames/`, which is the final sequence in every case. The edit counts (`edits`) are kept here, once, and reported
per sample (`inserted`, `deleted`).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pm_lightning.core.progress import progress_bar
from pm_lightning.data.importers import load_user_image
from pm_lightning.eval.final_grid import align_grid, square_grid
from pm_lightning.eval.metric_registry import BY_KEY, METRICS, SampleFeatures
from pm_lightning.eval.scores import pixel_features, sequence_proxies


@dataclass
class Sample:
    """One generated sample as read from its folder."""

    path: Path
    prompt: str
    domain: str
    grid: Image.Image
    frames: list[Image.Image]
    ground_truth: list[Image.Image] | None
    inserted: int = 0
    """Frames the adaptive steps inserted (`edits`)."""
    deleted: int = 0
    """Frames the adaptive steps deleted."""
    layout: tuple[int, int] | None = None
    """The stage-1 grid's (rows, cols): the report's settings, else grid.png's size over the first frame's."""

    @property
    def edited(self) -> bool:
        """Whether the final frames differ from the stage-1 grid's (an applied insertion or deletion)."""
        return bool(self.inserted or self.deleted)

    def scored_grids(self) -> tuple[Image.Image, Image.Image]:
        """(the grid Align scores, the grid the judge sees): the stage-1 grid, or after edits the final sequence's."""
        if not self.edited:
            return self.grid, self.grid
        rows, cols = self.layout
        cell = (self.grid.width // cols, self.grid.height // rows)
        return align_grid(self.frames, rows, cols, cell), square_grid(self.frames, cell)


def edits(adaptive: dict | None) -> tuple[int, int]:
    """(frames inserted, frames deleted) by the adaptive steps of one sample: its report's `adaptive` section,
    counting applied decisions only (None: no adaptive steps, (0, 0))."""
    if not adaptive:
        return 0, 0
    applied = [d for r in adaptive["rounds"] for d in r["decisions"] if d["applied"]]
    return sum(d.get("n", 1) for d in applied if d["action"] == "insert"), sum(d["action"] == "delete" for d in applied)


def _layout(report: dict, grid: Image.Image, first: Image.Image) -> tuple[int, int]:
    settings = report.get("settings") or {}
    if settings.get("rows") and settings.get("cols"):
        return int(settings["rows"]), int(settings["cols"])
    return max(1, round(grid.height / first.height)), max(1, round(grid.width / first.width))


def _open_frames(folder: Path) -> list[Image.Image]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not paths:
        raise ValueError(f"no frame images in {folder}")
    return [load_user_image(p, "frame") for p in paths]


def read_sample(folder: Path) -> Sample:
    """Read one sample folder; a ValueError names the missing piece."""
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{folder}/report.json is not valid JSON ({err})") from None
    if not isinstance(report, dict):
        raise ValueError(f"{folder}/report.json must hold a JSON object")
    missing = [k for k in ("prompt", "domain") if k not in report]
    if missing:
        raise ValueError(f"{folder}/report.json lacks {', '.join(missing)}")
    for part in ("grid.png", "frames"):
        if not (folder / part).exists():
            raise ValueError(f"{folder} has no {part}")
    gt = None
    if report.get("ground_truth"):
        gt_dir = Path(report["ground_truth"])
        gt = _open_frames(gt_dir if gt_dir.is_absolute() else folder / gt_dir)
    grid = load_user_image(folder / "grid.png", "grid")
    frames = _open_frames(folder / "frames")
    try:
        inserted, deleted = edits(report.get("adaptive"))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{folder}/report.json: unreadable adaptive section ({err!r})") from None
    layout = _layout(report, grid, frames[0])
    return Sample(folder, str(report["prompt"]), str(report["domain"]), grid, frames, gt, inserted, deleted, layout)


def find_samples(root: Path) -> list[Path]:
    """Every folder under `root` (or `root` itself) holding a report.json, sorted."""
    return sorted(p.parent for p in Path(root).rglob("report.json"))


def score_sample(enc, sample: Sample, judge=None) -> dict:
    """Every metric of one sample (one CLIP image pass over grid, frames and ground truth); judge metrics with a judge.
    An edited sample's Align and judge read its final sequence's grids (`Sample.scored_grids`)."""
    n, t = len(sample.frames), sample.ground_truth or []
    grid, judged = sample.scored_grids()
    emb = enc.image_embeddings([grid, *sample.frames, *t])  # (1 + T + T', D)
    frames_emb, truth_emb = emb[1 : 1 + n], emb[1 + n :]
    pix = pixel_features(list(sample.frames) + list(t))
    features = SampleFeatures(
        text=enc.text_embeddings([sample.prompt]),  # (1, D)
        grid=emb[:1],
        frames=frames_emb,
        clip=sequence_proxies(frames_emb, truth_emb if t else None),
        pixel=sequence_proxies(pix[:n], pix[n:] if t else None, "l2"),
        judge=judge.score(judged, sample.prompt) if judge is not None else None,
    )
    row = {
        "sample": str(sample.path),
        "domain": sample.domain,
        "prompt": sample.prompt,
        "frames": n,
        "proxy_target": "ground_truth" if t else "last_frame",
        "inserted": sample.inserted,
        "deleted": sample.deleted,
        "scored_grid": "final_sequence" if sample.edited else "stage1_grid",
    }
    for metric in METRICS:
        if not (metric.judge and judge is None) and not (metric.needs_truth and not t):
            row[metric.key] = metric.value(features)
    row = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}  # JSON has no NaN
    if judge is not None:
        row["judge_error"] = features.judge.error
    return row


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def aggregate(rows: list[dict], keys: list[str]) -> tuple[dict, dict]:
    """({domain: {key: mean, "n": count}}, mean over domains of each key)."""
    domains: dict[str, dict] = {}
    for d in sorted({r["domain"] for r in rows}):
        mine = [r for r in rows if r["domain"] == d]
        domains[d] = {"n": len(mine), **{k: _mean([r.get(k) for r in mine]) for k in keys}}
    mean = {"n": len(rows), **{k: _mean([v[k] for v in domains.values()]) for k in keys}}
    return domains, mean


def _fmt(key: str, value) -> str:
    return "-" if value is None else format(value, BY_KEY[key].fmt)


def markdown_table(domains: dict, mean: dict, keys: list[str]) -> str:
    """Paper-style table: one row per domain, then the mean over domains."""
    lines = ["| Domain | n | " + " | ".join(BY_KEY[k].header for k in keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for name, vals in [*domains.items(), ("**mean over domains**", mean)]:
        lines.append(f"| {name} | {vals['n']} | " + " | ".join(_fmt(k, vals[k]) for k in keys) + " |")
    return "\n".join(lines)


def evaluate(samples_dir: Path, enc, judge=None) -> dict:
    """Score every sample under `samples_dir`; returns the JSON-ready results."""
    folders = find_samples(samples_dir)
    if not folders:
        raise FileNotFoundError(f"no sample folders (with report.json) under {samples_dir}")
    rows, skipped = [], []
    for folder in progress_bar(folders, desc="evaluate", unit="sample"):
        try:
            sample = read_sample(folder)
        except (ValueError, OSError) as err:
            skipped.append({"sample": str(folder), "reason": str(err)})
            tqdm.write(f"skipping {folder}: {err}", file=sys.stderr)
            continue
        rows.append(score_sample(enc, sample, judge))
    keys = [m.key for m in METRICS if judge is not None or not m.judge]
    domains, mean = aggregate(rows, keys)
    return {
        "columns": {k: BY_KEY[k].header for k in keys},
        "domains": domains,
        "mean": mean,
        "samples": rows,
        "skipped": skipped,
        "encoders": enc.names,
        "judge": repr(judge) if judge is not None else None,
        "markdown": markdown_table(domains, mean, keys),
    }
