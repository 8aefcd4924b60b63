"""The evidence behind an ablation's report: the document results.json holds and RESULTS.md is rendered from alone.

Beside what `results.collect` gives (rows x seeds x metrics, summaries, contrasts, the resolved plan) it holds every
value in long form (`values`: one record per row, seed, domain and metric), the plan file relative to the repo,
the seeds, the command, the adaptive rows' calibration in use (OUT/calibration.json's content), the domain gates of
each masked row's final adapter (read from its stage-1 training's last checkpoint), the figures (paths relative to
OUT) and when it was written. No absolute path is kept (`core.paths.portable`): the file can be committed and read anywhere.

`check` recomputes the summaries and the contrasts (the same `stats` and `results` functions) from the long-form
values alone and names what does not follow from them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import time
from dataclasses import asdict, fields
from pathlib import Path

from pm_lightning.ablation.jobs import calibration_file, stage1_dir
from pm_lightning.ablation.plan import Contrast, Plan
from pm_lightning.ablation.results import adjust, contrast_record
from pm_lightning.ablation.stats import summarize
from pm_lightning.core.paths import portable
from pm_lightning.core.run_layout import RunDir

NEAR_ZERO = 0.05  # a gate with |value| below this counts as off (gates start at 1, sigmoid gates at 0.95)
_GATE_KEY = re.compile(r"\.lora_gate(\.default)?$")  # a masked layer's gate parameter in a checkpoint's state_dict


# ---------------------------------------------------------------- paths


def portable_command(command: str) -> str:
    """The command with each absolute path argument (`/x`, `--flag=/x`) made portable."""
    words = []
    for word in shlex.split(command):
        flag, eq, value = word.partition("=")
        if eq and flag.startswith("-") and os.path.isabs(value):
            word = f"{flag}={portable(value)}"
        elif os.path.isabs(word):
            word = portable(word)
        words.append(word)
    return shlex.join(words)


def portable_tree(data):
    """Every string of a JSON-like tree that is an absolute path, made portable."""
    if isinstance(data, dict):
        return {k: portable_tree(v) for k, v in data.items()}
    if isinstance(data, list):
        return [portable_tree(v) for v in data]
    if isinstance(data, str) and os.path.isabs(data):
        return portable(data)
    return data


# ---------------------------------------------------------------- values


def long_form(results: dict) -> list[dict]:
    """Every (row, seed, domain, metric) value of `results.collect`'s rows: `align/lego` is metric `align`, domain
    `lego`; a key without a domain (`align`: the training domains' mean, `unseen_align`: the held-out ones', a count
    or a time) has domain None."""
    records = []
    for row, r in results["rows"].items():
        for seed, s in r["seeds"].items():
            for key in sorted(s["metrics"]):
                metric, _, domain = key.partition("/")
                records.append({"row": row, "seed": int(seed), "domain": domain or None, "metric": metric,
                                "value": s["metrics"][key]})  # fmt: skip
    return records


def rows_from_values(values: list[dict], rows: list[str]) -> dict[str, dict]:
    """`{row: {"seeds": {seed: {"metrics": {key: value}}}}}` rebuilt from the long-form values (seeds ascending)."""
    out: dict[str, dict] = {row: {"seeds": {}} for row in rows}
    for v in sorted(values, key=lambda v: v["seed"]):
        key = v["metric"] if v["domain"] is None else f"{v['metric']}/{v['domain']}"
        seeds = out.setdefault(v["row"], {"seeds": {}})["seeds"]
        seeds.setdefault(v["seed"], {"metrics": {}})["metrics"][key] = v["value"]
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


CHECKED = ("n", "diffs", "mean", "low", "high", "p", "p_holm", "holm_m", "verdict")  # a contrast's figures


def check(doc: dict) -> list[str]:
    """What of the summaries and contrasts does not follow from the long-form values (empty: all of it does):
    each row's per-metric n / mean / sd (`stats.summarize`) and each contrast's paired figures, p, Holm p and verdict
    (`results.contrast_record`, `results.adjust`), recomputed from `values` alone."""
    rows = rows_from_values(doc["values"], list(doc["rows"]))
    problems = []
    for row, r in doc["rows"].items():
        seeds = rows[row]["seeds"].values()
        for key, summary in r["summary"].items():
            if not _same(asdict(summarize([s["metrics"].get(key) for s in seeds])), summary):
                problems.append(f"rows.{row}.summary.{key}")
    names = [f.name for f in fields(Contrast)]
    again = adjust([contrast_record(Contrast(**{k: c[k] for k in names}), rows) for c in doc["contrasts"]])
    for old, new in zip(doc["contrasts"], again):
        problems += [f"contrasts.{old['name']}.{k}" for k in CHECKED if not _same(old[k], new[k])]
    return problems


# ---------------------------------------------------------------- gates


def gate_stats(checkpoint: str | Path) -> dict | None:
    """The domain gates of a masked adapter's checkpoint: their kind, count, mean, min, max, the fraction near 0
    (|gate| < NEAR_ZERO) and each domain's mean; gate values as the layers use them (sigmoid gates: the sigmoid of
    the parameters); a tied gate (fused q/k/v) counted once. None for another adapter kind or no gates."""
    import torch

    from pm_lightning.models.adapter_config import AdapterConfig
    from pm_lightning.models.lora_files import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    hp = ckpt.get("hyper_parameters") or {}
    if not hp.get("adapter") or hp["adapter"].get("kind") != "masked":
        return None
    cfg = AdapterConfig.from_checkpoint(dict(hp["adapter"]))
    seen, parts = set(), []
    for key in sorted(ckpt["state_dict"]):
        t = ckpt["state_dict"][key]
        where = (t.untyped_storage().data_ptr(), t.storage_offset())
        if _GATE_KEY.search(key) and where not in seen:
            seen.add(where)
            parts.append(t.detach().float().reshape(t.shape[0], -1))  # (C, g)
    if not parts or sum(p.numel() for p in parts) == 0:
        return None
    gates = torch.cat(parts, dim=1)  # (C, total g)
    if cfg.gates == "sigmoid":
        gates = torch.sigmoid(gates)
    domains = list(hp.get("domains") or [])
    per_domain = {d: float(gates[i].mean()) for i, d in enumerate(domains)} if len(domains) == gates.shape[0] else {}
    return {"gates": cfg.gates, "n": gates.numel(), "mean": float(gates.mean()), "min": float(gates.min()),
            "max": float(gates.max()), "near_zero": float((gates.abs() < NEAR_ZERO).float().mean()), "near_zero_below": NEAR_ZERO,
            "per_domain_mean": per_domain}  # fmt: skip


def domain_gates(plan: Plan, out: Path) -> dict[str, dict]:
    """`{row: {"training": its stage-1 row, "seeds": {seed: gate_stats}}}` for each active row whose stage-1
    adapter is masked, read from that training's last checkpoint (a seed whose checkpoint is missing is left out, one
    that cannot be read is `{"error": ...}`)."""
    found, cache = {}, {}
    for row in plan.active_rows:
        s1 = plan.stage1_row(row)
        if s1 is None:
            continue
        seeds = {}
        for seed in plan.seeds:
            ckpt = RunDir(stage1_dir(out, s1, seed)).last_checkpoint
            if (s1, seed) not in cache:
                try:
                    cache[s1, seed] = gate_stats(ckpt) if ckpt.is_file() else None
                except ValueError:  # lora_files.load_checkpoint's refusal: say so, the report still renders
                    cache[s1, seed] = {"error": f"unreadable checkpoint {portable(ckpt)}"}
            if cache[s1, seed] is not None:
                seeds[str(seed)] = cache[s1, seed]
        if seeds:
            found[row] = {"training": s1, "seeds": seeds}
    return found


# ---------------------------------------------------------------- the document


def document(plan: Plan, out: Path, results: dict, command: str, charts: dict, pictures: dict) -> dict:
    """results.json: `results.collect`'s result and the evidence (module docstring), JSON-ready, no absolute path."""
    out = Path(out)
    calibration = calibration_file(out)
    doc = {
        **results,
        "plan_path": portable(plan.source) if plan.source else None,
        "command": portable_command(command),
        "active_rows": plan.active_rows,
        "written": time.strftime("%Y-%m-%d %H:%M %Z"),
        "values": long_form(results),
        "calibration": json.loads(calibration.read_text()) if calibration.is_file() else None,
        "gates": domain_gates(plan, out),
        "charts": {m: Path(p).relative_to(out).as_posix() for m, p in charts.items()},
        "pictures": {r: Path(p).relative_to(out).as_posix() for r, p in pictures.items()},
    }
    return portable_tree(json.loads(json.dumps(doc)))
