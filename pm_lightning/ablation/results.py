"""Collecting an ablation: every (row, seed)'s metrics, training wall time and parameter counts, the mean and spread
of each row, and the paired contrasts with their verdicts; the JSON-ready result that results.json, RESULTS.md and
W&B are made from.

A contrast's verdict comes from the paired t test alone (the interval of a - b over the shared seeds and its
p-value), Holm-adjusted over the contrasts of its family (`family:` in the plan): resolved when the adjusted p is
below ALPHA. The unpaired "beyond the seed spread" flag is kept as an informative column and decides nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from pm_lightning.ablation.columns import column
from pm_lightning.ablation.jobs import Job, eval_dir
from pm_lightning.ablation.plan import Plan
from pm_lightning.ablation.runner import read_marker
from pm_lightning.ablation.stats import beyond_spread, holm, p_value, paired, summarize

ALPHA = 0.05  # familywise error rate of each family of contrasts (Holm)


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


def direction(diff, better: str) -> str:
    """Direction of a paired difference against the paper's claim."""
    if diff.mean is None:
        return "no data"
    if diff.mean == 0:
        return "no difference"
    agrees = diff.mean > 0 if better == "higher" else diff.mean < 0
    return "reproduced in direction" if agrees else "opposite direction"


def verdict(way: str, p_holm: float | None) -> str:
    """The claim's verdict from its direction and Holm-adjusted paired p."""
    if way in ("no data", "no difference"):
        return way
    if p_holm is None:
        return "no test (one seed)"
    resolved = p_holm < ALPHA
    if way == "reproduced in direction":
        return "reproduced" if resolved else "not resolved (the paper's direction)"
    return "does not reproduce (opposite, resolved)" if resolved else "not resolved (opposite direction)"


def contrast_record(c, rows: dict) -> dict:
    """One contrast before Holm: the paired interval, its p, the rows' spreads (informative)."""
    a = {s: v["metrics"].get(c.metric) for s, v in rows[c.a]["seeds"].items()}
    b = {s: v["metrics"].get(c.metric) for s, v in rows[c.b]["seeds"].items()}
    diff = paired(a, b)
    spread_a, spread_b = summarize(list(a.values())), summarize(list(b.values()))
    return {**asdict(c), "header": column(c.metric).header, **asdict(diff), "excludes_zero": diff.excludes_zero,
            "p": p_value(a, b), "beyond_spread": beyond_spread(diff, spread_a, spread_b),
            "sd_a": spread_a.sd, "sd_b": spread_b.sd, "direction": direction(diff, c.better)}  # fmt: skip


def adjust(contrasts: list[dict]) -> list[dict]:
    """Holm over each family's tested contrasts; then each verdict."""
    for family in dict.fromkeys(c["family"] for c in contrasts):
        mine = [c for c in contrasts if c["family"] == family]
        tested = [c for c in mine if c["p"] is not None]
        for c, adjusted in zip(mine, holm([c["p"] for c in mine])):
            c.update(p_holm=adjusted, holm_m=len(tested))
    for c in contrasts:
        c["verdict"] = verdict(c["direction"], c["p_holm"])
    return contrasts


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
    contrasts = adjust([contrast_record(c, rows) for c in plan.contrasts])
    return {"ablation": plan.name, "quick": plan.quick, "seeds": plan.seeds, "rows": rows, "contrasts": contrasts,
            "missing": missing, "plan": plan.to_json()}  # fmt: skip
