"""Collecting an ablation: every (row, seed)'s metrics, training wall time and parameter counts, the mean and spread
of each row, and the paired contrasts; the JSON-ready result that results.json, RESULTS.md and W&B are made from."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from pm_lightning.ablation.columns import column
from pm_lightning.ablation.jobs import Job, eval_dir
from pm_lightning.ablation.plan import Plan
from pm_lightning.ablation.runner import read_marker
from pm_lightning.ablation.stats import beyond_spread, paired, summarize


def read_pair(out: Path, row: str, seed: int) -> dict | None:
    """The metrics record of a finished (row, seed), or None."""
    path = eval_dir(out, row, seed) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training_seconds(out: Path, jobs: list[Job], row: str, seed: int) -> tuple[float | None, bool]:
    """(wall seconds of the trainings a (row, seed) needs, whether any of them was resumed: then only the last
    attempt is counted)."""
    evaluation = next((j for j in jobs if j.id == f"eval/{row}/seed-{seed}"), None)
    if evaluation is None:
        return None, False
    total, resumed = 0.0, False
    for dep in evaluation.deps:
        marker = read_marker(out, next(j for j in jobs if j.id == dep))
        if marker is None:
            return None, False
        total += marker["wall_s"]
        resumed |= bool(marker.get("resumed"))
    return total, resumed


def verdict(contrast, diff, better: str) -> str:
    """Direction of a paired difference against the paper's claim."""
    if diff.mean is None:
        return "no data"
    if diff.mean == 0:
        return "no difference"
    agrees = diff.mean > 0 if better == "higher" else diff.mean < 0
    return "reproduced in direction" if agrees else "opposite direction"


def collect(plan: Plan, out: Path, jobs: list[Job], params: dict[str, dict[str, int]]) -> dict:
    """rows x seeds x metrics, per-row mean and sd, contrasts; pairs without metrics are listed as missing."""
    rows, missing = {}, []
    for row in plan.active_rows:
        seeds = {}
        for seed in plan.seeds:
            rec = read_pair(out, row, seed)
            if rec is None:
                missing.append(f"{row}/seed-{seed}")
                continue
            metrics = dict(rec["metrics"])
            seconds, resumed = training_seconds(out, jobs, row, seed)
            if seconds is not None and plan.stage1_row(row) is not None:
                metrics["train_s"] = seconds
            metrics.update(params.get(row, {}))
            seeds[seed] = {"metrics": metrics, "train_resumed": resumed}
        keys = sorted({k for s in seeds.values() for k in s["metrics"]})
        summary = {k: asdict(summarize([s["metrics"].get(k) for s in seeds.values()])) for k in keys}
        spec = plan.rows[row]
        rows[row] = {"label": spec.label or row, "paper": spec.paper, "seeds": seeds, "summary": summary}
    contrasts = []
    for c in plan.contrasts:
        a = {s: v["metrics"].get(c.metric) for s, v in rows[c.a]["seeds"].items()}
        b = {s: v["metrics"].get(c.metric) for s, v in rows[c.b]["seeds"].items()}
        diff = paired(a, b)
        spread_a, spread_b = summarize(list(a.values())), summarize(list(b.values()))
        contrasts.append({**asdict(c), "header": column(c.metric).header, **asdict(diff),
                          "excludes_zero": diff.excludes_zero, "beyond_spread": beyond_spread(diff, spread_a, spread_b),
                          "sd_a": spread_a.sd, "sd_b": spread_b.sd, "verdict": verdict(c, diff, c.better)})  # fmt: skip
    return {"ablation": plan.name, "quick": plan.quick, "seeds": plan.seeds, "rows": rows, "contrasts": contrasts,
            "missing": missing, "plan": plan.to_json()}  # fmt: skip
