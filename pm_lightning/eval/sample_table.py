"""Scoring a folder of generated samples: per-sample scores, the per-domain table (markdown + JSON).

A sample folder holds `grid.png`, `frames/` (00.png, 01.png, ...) and `report.json` with at least `prompt`
and `domain`, optionally `ground_truth` (a folder of true frames, relative to the sample folder or absolute)
and `steps`. Definitions: docs/EVALUATION.md.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pm_lightning.data.importers import load_user_image
from pm_lightning.eval.scores import clip_score, pixel_features, sequence_proxies

# (key, header): the table's columns in order; judge columns only with --judge.
COLUMNS = (
    ("align", "Align"),
    ("clip_frames", "CLIP frames"),
    ("accuracy", "Acc"),
    ("coherence", "Coh"),
    ("usability", "Use"),
    ("monotonicity_clip", "Mono"),
    ("evenness_clip", "Even"),
    ("monotonicity_pixel", "Mono px"),
    ("evenness_pixel", "Even px"),
    ("gt_similarity", "GT sim"),
)
JUDGE_KEYS = ("accuracy", "coherence", "usability")


@dataclass
class Sample:
    """One generated sample as read from its folder."""

    path: Path
    prompt: str
    domain: str
    grid: Image.Image
    frames: list[Image.Image]
    ground_truth: list[Image.Image] | None


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
    return Sample(folder, str(report["prompt"]), str(report["domain"]), grid, _open_frames(folder / "frames"), gt)


def find_samples(root: Path) -> list[Path]:
    """Every folder under `root` (or `root` itself) holding a report.json, sorted."""
    return sorted(p.parent for p in Path(root).rglob("report.json"))


def score_sample(enc, sample: Sample, judge=None) -> dict:
    """Every score of one sample (one CLIP image pass over grid, frames and ground truth)."""
    n, t = len(sample.frames), sample.ground_truth or []
    emb = enc.image_embeddings([sample.grid, *sample.frames, *t])  # (1 + T + T', D)
    text = enc.text_embeddings([sample.prompt])  # (1, D)
    frames_emb, truth_emb = emb[1 : 1 + n], emb[1 + n :]
    row = {
        "sample": str(sample.path),
        "domain": sample.domain,
        "prompt": sample.prompt,
        "frames": n,
        "proxy_target": "ground_truth" if t else "last_frame",
        "align": clip_score(emb[:1], text).item(),
        "clip_frames": clip_score(frames_emb, text.expand(n, -1)).mean().item(),
    }
    clip = sequence_proxies(frames_emb, truth_emb if t else None)
    if "gt_similarity" in clip:
        row["gt_similarity"] = clip.pop("gt_similarity")
    row.update({f"{k}_clip": v for k, v in clip.items()})
    pix = pixel_features(list(sample.frames) + list(t))
    row.update({f"{k}_pixel": v for k, v in sequence_proxies(pix[:n], pix[n:] if t else None, "l2").items()})
    row = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}  # JSON has no NaN
    if judge is not None:
        result = judge.score(sample.grid, sample.prompt)
        row.update({k: getattr(result, k) for k in JUDGE_KEYS})
        row["judge_error"] = result.error
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
    if value is None:
        return "-"
    return f"{value:.2f}" if key in ("align", "clip_frames", *JUDGE_KEYS) else f"{value:.3f}"


def markdown_table(domains: dict, mean: dict, keys: list[str]) -> str:
    """Paper-style table: one row per domain, then the mean over domains."""
    headers = dict(COLUMNS)
    lines = ["| Domain | n | " + " | ".join(headers[k] for k in keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for name, vals in [*domains.items(), ("**mean over domains**", mean)]:
        lines.append(f"| {name} | {vals['n']} | " + " | ".join(_fmt(k, vals[k]) for k in keys) + " |")
    return "\n".join(lines)


def evaluate(samples_dir: Path, enc, judge=None) -> dict:
    """Score every sample under `samples_dir`; returns the JSON-ready results."""
    folders = find_samples(samples_dir)
    if not folders:
        raise FileNotFoundError(f"no sample folders (with report.json) under {samples_dir}")
    rows, skipped = [], []
    for folder in folders:
        try:
            sample = read_sample(folder)
        except (ValueError, OSError) as err:
            skipped.append({"sample": str(folder), "reason": str(err)})
            print(f"skipping {folder}: {err}", file=sys.stderr)
            continue
        rows.append(score_sample(enc, sample, judge))
    keys = [k for k, _ in COLUMNS if (judge is not None or k not in JUDGE_KEYS)]
    domains, mean = aggregate(rows, keys)
    return {
        "columns": {k: dict(COLUMNS)[k] for k in keys},
        "domains": domains,
        "mean": mean,
        "samples": rows,
        "skipped": skipped,
        "encoders": enc.names,
        "judge": repr(judge) if judge is not None else None,
        "markdown": markdown_table(domains, mean, keys),
    }
