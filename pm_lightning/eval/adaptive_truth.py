"""Adaptive steps against ground truth: damaged synthetic sequences whose right edit is known, one round of
decisions scored against it, and the calibration of k1, k2 and the guards for one encoder pair.

Conditions, on never-trained sequences of every domain (corpus split seed 1; the calibration uses split 2):

* untouched: the true sequence; any edit is a false edit.
* one_removed: one interior frame removed; found = an insertion at the pair that lost it.
* duplicated: one frame repeated (a JPEG round trip, as a generator repeats a frame: never bit-identical);
  found = a deletion of one of the two copies.
* two_removed: two interior frames removed at different places (at least three frames apart, so both pairs can
  be edited in one round; 9-frame domains only: a 4-frame sequence has two interior frames, adjacent); found =
  an insertion at each of the two pairs (counted per removal).

Rows drop one Delta term each (weight 0; without Delta_sem = without step texts), every row calibrated on its own.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from pm_lightning.core.progress import progress_bar
from pm_lightning.data.near_duplicates import near_duplicate
from pm_lightning.data.synthetic_corpus import DOMAINS, generate_sequence, sequence_seed
from pm_lightning.inference.adaptive_rule import (
    AdaptiveConfig,
    combine,
    decide,
    effective_weights,
    global_delta,
    local_delta,
    semantic_delta,
    thresholds,
)

CONDITIONS = ("untouched", "one_removed", "duplicated", "two_removed")
ROWS = {  # name -> (AdaptiveConfig weight overrides, with step texts)
    "full": ({}, True),
    "without Delta_glob": ({"w_glob": 0.0}, True),
    "without Delta_loc": ({"w_loc": 0.0}, True),
    "without Delta_sem": ({}, False),
}
GOALS = {"untouched_edited": ("<=", 0.10), "removal_found": (">=", 0.80), "duplicate_deleted": (">=", 0.90)}


@dataclass
class Case:
    """One damaged (or untouched) sequence: frame order (indices >= n are near-duplicates of index - n) and answer."""

    condition: str
    seq: int
    order: list[int]
    pairs: tuple[int, ...] = ()  # insertions expected at these pairs
    copies: tuple[int, ...] = ()  # a deletion of one of these frames expected


def make_cases(seqs, per_condition: int, seed: int = 0) -> list[Case]:
    """`per_condition` cases of every condition, cycling through `seqs` (two_removed through 9-frame ones)."""
    rng = random.Random(seed)
    nine = [i for i, s in enumerate(seqs) if len(s.frames) >= 9]
    out = []
    for c in range(per_condition):
        s = c % len(seqs)
        n = len(seqs[s].frames)
        out.append(Case("untouched", s, list(range(n))))
        k = rng.randrange(1, n - 1)
        out.append(Case("one_removed", s, [i for i in range(n) if i != k], pairs=(k - 1,)))
        k = rng.randrange(n)
        out.append(Case("duplicated", s, list(range(k + 1)) + [n + k] + list(range(k + 1, n)), copies=(k, k + 1)))
        if nine:
            s9 = nine[c % len(nine)]
            n9 = len(seqs[s9].frames)
            k1 = rng.randrange(1, n9 - 4)
            k2 = rng.randrange(k1 + 3, n9 - 1)
            order = [i for i in range(n9) if i not in (k1, k2)]
            out.append(Case("two_removed", s9, order, pairs=(k1 - 1, k2 - 2)))
    return out


def case_terms(scorer, seqs, cases: list[Case]) -> list[dict[str, torch.Tensor]]:
    """The Delta terms of every case (features computed once per sequence, near-duplicates included)."""
    feats = {}
    for s in progress_bar(sorted({c.seq for c in cases}), desc="encode sequences", unit="seq"):
        seq = seqs[s]
        v, p = scorer.image_features(seq.frames + [near_duplicate(f) for f in seq.frames])  # (2n, D), (2n, P, E)
        feats[s] = (v, p, scorer.text_features(seq.steps), len(seq.frames))
    out = []
    for c in cases:
        v, p, u, n = feats[c.seq]
        out.append({"glob": global_delta(v[c.order]), "loc": local_delta(p[c.order]),
                    "sem": semantic_delta(u[[k % n for k in c.order]])})  # fmt: skip
    return out


def oracle_terms(seqs, cases: list[Case]) -> list[dict[str, torch.Tensor]]:
    """Every term set to the ground truth: the number of elements that change between neighbours (0 for a copy).

    The ceiling of the decision rule: no metric that is proportional to the true change can do better."""
    out = []
    for c in cases:
        seq = seqs[c.seq]
        idx = [k % len(seq.frames) for k in c.order]
        change = torch.tensor([float(seq.change_between(a, b)) if b > a else 0.0 for a, b in zip(idx, idx[1:])])
        out.append({"glob": change, "loc": change, "sem": change})
    return out


ORACLE = "oracle: Delta = true change (elements)"


def row_config(row: str, base: AdaptiveConfig) -> tuple[AdaptiveConfig, bool]:
    overrides, texts = ROWS[row]
    return replace(base, **overrides), texts


def outcomes(terms: list[dict], cases: list[Case], cfg: AdaptiveConfig, texts: bool) -> dict[str, float]:
    """Round-one decisions (what adapt_sequence applies in its first round) scored against the answers."""
    hits = {k: [] for k in ("untouched_edited", "removal_found", "duplicate_deleted", "two_removed_found",
                            "damaged_other_edits", "missing_pair_is_largest", "copy_pair_is_smallest")}  # fmt: skip
    w = effective_weights(cfg, texts)
    for t, c in zip(terms, cases):
        delta = combine({**t, "sem": t["sem"] if texts else None}, w)
        applied = [d for d in decide(delta, thresholds(delta, cfg), cfg) if d.applied]
        inserts = {d.pair for d in applied if d.action == "insert"}
        deletes = {d.frame for d in applied if d.action == "delete"}
        if c.condition == "untouched":
            hits["untouched_edited"].append(bool(applied))
            continue
        if c.condition == "one_removed":
            hits["removal_found"].append(c.pairs[0] in inserts)
            hits["missing_pair_is_largest"].append(int(delta.argmax()) == c.pairs[0])  # the signal, before any rule
        elif c.condition == "two_removed":
            hits["two_removed_found"].extend(p in inserts for p in c.pairs)
        else:
            hits["duplicate_deleted"].append(bool(deletes & set(c.copies)))
            hits["copy_pair_is_smallest"].append(int(delta.argmin()) == c.copies[0])
        right = len(inserts & set(c.pairs)) + bool(deletes & set(c.copies))
        hits["damaged_other_edits"].append(len(applied) > right)
    return {k: (sum(v) / len(v) if v else float("nan")) for k, v in hits.items()}


def calibrate_row(
    terms: list[dict], cases: list[Case], row: str = "full", max_false: float = 0.10, base: AdaptiveConfig | None = None
) -> tuple[AdaptiveConfig, dict]:
    """k1, add_floor, then k2, del_ceiling: the insertion settings that find the most removals while at most
    `max_false` / 2 of the untouched sequences get an insertion, then the deletion settings that delete the most
    repeats while at most `max_false` of them get any edit. Returns (config, its rates on these cases)."""
    cfg, texts = row_config(row, base or AdaptiveConfig())
    w = effective_weights(cfg, texts)
    normal = torch.cat([combine({**t, "sem": t["sem"] if texts else None}, w) for t, c in zip(terms, cases)
                        if c.condition == "untouched"])  # fmt: skip
    floors = sorted({max(1e-4, round(float(normal.quantile(q)), 4)) for q in torch.linspace(0.5, 1.0, 26)})
    low = [float(normal.quantile(q)) for q in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)]  # a repeat sits below every true pair
    ceilings = sorted({max(0.0, round(q * f, 5)) for q in low for f in (0.1, 0.25, 0.5, 0.75, 1.0)})
    ceiling_off = min(ceilings) / 2  # no deletion while the insertion settings are chosen

    def score(c: AdaptiveConfig) -> dict:
        return outcomes(terms, cases, c, texts)

    best_ins = None
    for k1 in (0.0, 0.5, 0.8, 1.0, 1.5, 2.0):
        for floor in floors:
            c = replace(cfg, k1=k1, add_floor=floor, del_ceiling=min(ceiling_off, floor / 2))
            r = score(c)
            if r["untouched_edited"] <= max_false / 2:
                key = (r["removal_found"] + r.get("two_removed_found", 0), -floor)
                if best_ins is None or key > best_ins[0]:
                    best_ins = (key, k1, floor)
    k1, floor = (best_ins[1], best_ins[2]) if best_ins else (cfg.k1, max(floors))
    best_del = None
    for k2 in (0.0, 0.5, 1.0, 1.5, 2.0):
        for ceiling in ceilings:
            if ceiling >= floor:
                continue
            c = replace(cfg, k1=k1, add_floor=floor, k2=k2, del_ceiling=ceiling)
            r = score(c)
            if r["untouched_edited"] <= max_false:
                key = (r["duplicate_deleted"], -r["damaged_other_edits"], ceiling)
                if best_del is None or key > best_del[0]:
                    best_del = (key, k2, ceiling)
    k2, ceiling = (best_del[1], best_del[2]) if best_del else (cfg.k2, min(ceilings) / 2)
    final = replace(cfg, k1=k1, add_floor=floor, k2=k2, del_ceiling=ceiling)
    return final, score(final)


def calibration_record(cfg: AdaptiveConfig, clip: str, dino: str, rates: dict, data: dict) -> dict:
    """What is stored with an encoder pair (`adaptive_calibration.json`): the encoders, the settings, the data."""
    keep = ("k1", "k2", "add_floor", "del_ceiling")
    return {"encoders": {"clip": clip, "dino": dino}, "config": {k: asdict(cfg)[k] for k in keep},
            "rates_on_calibration_data": rates, "data": data}  # fmt: skip


def truth_sequences(split_seed: int, per_domain: int, size: int = 64):
    """`per_domain` sequences of every synthetic domain from one corpus split (1: validation, 2: calibration)."""
    return [generate_sequence(d, sequence_seed(split_seed, d, i), size) for d in DOMAINS for i in range(per_domain)]


def benchmark(scorer, per_condition: int = 200, calib_per_condition: int = 120, seed: int = 0) -> dict:
    """Calibrate every row on split 2, measure it on split 1 (and the shipped defaults); JSON-ready."""
    per_domain = -(-per_condition // len(DOMAINS))
    test_seqs = truth_sequences(1, per_domain)
    calib_seqs = truth_sequences(2, -(-calib_per_condition // len(DOMAINS)))
    test_cases, calib_cases = (
        make_cases(test_seqs, per_condition, seed),
        make_cases(calib_seqs, calib_per_condition, seed + 1),
    )
    test_terms, calib_terms = case_terms(scorer, test_seqs, test_cases), case_terms(scorer, calib_seqs, calib_cases)
    counts = {c: sum(x.condition == c for x in test_cases) for c in CONDITIONS}
    rows = {"shipped defaults (not recalibrated)": {"config": asdict(AdaptiveConfig()),
            "rates": outcomes(test_terms, test_cases, AdaptiveConfig(), True)}}  # fmt: skip
    for row in ROWS:
        cfg, _ = calibrate_row(calib_terms, calib_cases, row)
        rows[row] = {"config": asdict(cfg), "rates": outcomes(test_terms, test_cases, cfg, ROWS[row][1])}
    cfg, _ = calibrate_row(oracle_terms(calib_seqs, calib_cases), calib_cases)
    rows[ORACLE] = {
        "config": asdict(cfg),
        "rates": outcomes(oracle_terms(test_seqs, test_cases), test_cases, cfg, True),
    }
    return {"cases_per_condition": counts, "test_split": 1, "calibration_split": 2, "rows": rows}


def markdown_table(result: dict) -> str:
    """The rows x rates table (percent), goals marked."""
    counts = result["cases_per_condition"]
    head = (
        f"| row | untouched edited (n={counts['untouched']}) | removal found (n={counts['one_removed']}) | "
        f"duplicate deleted (n={counts['duplicated']}) | two removed: found per removal (n={counts['two_removed']}) | "
        "damaged: other edits | missing pair has the largest Delta | copy pair has the smallest Delta | k1 | k2 | "
        "add_floor | del_ceiling |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for name, row in result["rows"].items():
        r, c = row["rates"], row["config"]
        cells = [_cell(r, "untouched_edited"), _cell(r, "removal_found"), _cell(r, "duplicate_deleted"),
                 f"{100 * r['two_removed_found']:.1f}%", f"{100 * r['damaged_other_edits']:.1f}%",
                 f"{100 * r['missing_pair_is_largest']:.1f}%", f"{100 * r['copy_pair_is_smallest']:.1f}%"]  # fmt: skip
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {c['k1']} | {c['k2']} | {c['add_floor']} | {c['del_ceiling']} |"
        )
    return "\n".join(lines)


def _cell(rates: dict, key: str) -> str:
    op, goal = GOALS[key]
    ok = rates[key] <= goal if op == "<=" else rates[key] >= goal
    return f"{100 * rates[key]:.1f}% {'ok' if ok else 'missed'} ({op} {100 * goal:.0f}%)"


def write_docs(table: str, command: str) -> None:
    """Replace the ground-truth section of docs/ADAPTIVE.md."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "ADAPTIVE.md"
    header = "## Ground truth: what the adaptive steps find"
    section = (
        f"{header}\n\n`{command}` (`make bench-adaptive`): never-trained synthetic sequences of every domain (split 1), "
        "damaged in a known way; one round of decisions with the settings calibrated on other sequences (split 2) "
        "for each row; the tiny evaluators (data/tiny-eval). Settings of the full row are stored in "
        "`data/tiny-eval/adaptive_calibration.json`, which `generate` / `adapt` read for these encoders only.\n\n"
        f"{table}\n"
    )
    text = doc.read_text()
    start = text.find(header)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(header))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    doc.write_text(text)
