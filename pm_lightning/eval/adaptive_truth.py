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
Two oracles replace every Delta term by the ground truth: the number of elements that change between the frames
(calibrated like the other rows, and with the paper's rule), and the number of process steps between them (scored
with the paper's rule, `PAPER_RULE`: k1 = 0.8, k2 = 1.0, no guards).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace

import torch

from pm_lightning.core.progress import progress_bar
from pm_lightning.data.near_duplicates import near_duplicate
from pm_lightning.data.synthetic_corpus import DOMAINS, generate_sequence, sequence_seed
from pm_lightning.inference.adaptive_rule import (
    PAPER_RULE,
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


def step_oracle_terms(seqs, cases: list[Case]) -> list[dict[str, torch.Tensor]]:
    """Every term set to the number of process steps between neighbours (`Sequence.steps_between` for frames
    i < j: j - i when every frame is one step, what the frames cover in a varied sequence; 0 for a copy).

    Known for the synthetic sequences by construction; unlike the element count it does not depend on how much a
    step draws, so every true pair of a fixed-length sequence has the same Delta (1)."""
    out = []
    for c in cases:
        seq = seqs[c.seq]
        idx = [k % len(seq.frames) for k in c.order]
        steps = torch.tensor([float(seq.steps_between(a, b)) if b > a else 0.0 for a, b in zip(idx, idx[1:])])
        out.append({"glob": steps, "loc": steps, "sem": steps})
    return out


ORACLE = "oracle: Delta = true change (elements)"
ORACLE_PAPER = "oracle: Delta = true change (elements), paper's rule (no guards)"
STEP_ORACLE = "oracle: Delta = process steps, paper's rule (no guards)"
PAPER_ROW = "paper's rule (k1 0.8, k2 1.0, no guards)"
STORED_ROW = "stored calibration (adaptive_calibration.json, what generate uses)"


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


K1_GRID = (0.0, 0.25, 0.5, 0.8, 0.9, 1.0, 1.5, 2.0)
K2_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)


def max_z(n: int) -> float:
    """The largest z-score (x - mu) / sigma that any of n values can have, population sigma: sqrt(n - 1).

    Samuelson's inequality; reached when the other n - 1 values are equal. So "insert where Delta > mu + k1 sigma"
    can fire on a sequence of n Deltas only if k1 < sqrt(n - 1): a 4-frame sequence that lost a frame has 3 frames,
    2 Deltas, largest z exactly 1, and any k1 >= 1 can never find that removal (without a floor below mu)."""
    return math.sqrt(max(n - 1, 0))


def k1_grid(cases: list[Case]) -> list[float]:
    """The k1 values tried: those of K1_GRID below max_z of the shortest one-removed case's Delta count, so a
    removal stays reachable in every sequence of the data (k1 < 1 when 4-frame sequences are among them)."""
    n = min((len(c.order) - 1 for c in cases if c.condition == "one_removed"), default=0)
    return [k for k in K1_GRID if k < max_z(n)] or [0.0]


def calibration_grid(terms: list[dict], cases: list[Case], row: str = "full") -> dict:
    """The candidates `calibrate_row` tries: insertion (k1, add_floor) and deletion (k2, del_ceiling) pairs, and the
    whole-rule candidates (the paper's rule, no guards). add_floor 0 and del_ceiling inf are "no guard"."""
    cfg, texts = row_config(row, AdaptiveConfig())
    w = effective_weights(cfg, texts)
    normal = torch.cat([combine({**t, "sem": t["sem"] if texts else None}, w) for t, c in zip(terms, cases)
                        if c.condition == "untouched"])  # fmt: skip
    floors = sorted({0.0} | {max(1e-4, round(float(normal.quantile(q)), 4)) for q in torch.linspace(0.5, 1.0, 26)})
    low = [float(normal.quantile(q)) for q in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)]  # a repeat sits below every true pair
    ceilings = sorted({max(0.0, round(q * f, 5)) for q in low for f in (0.1, 0.25, 0.5, 0.75, 1.0)}) + [math.inf]
    return {
        "insert": [(k1, f) for k1 in k1_grid(cases) for f in floors],
        "delete": [(k2, c) for k2 in K2_GRID for c in ceilings],
        "rules": [PAPER_RULE],
    }


def _found(r: dict) -> float:
    return sum(0.0 if math.isnan(r[k]) else r[k] for k in ("removal_found", "two_removed_found", "duplicate_deleted"))


def calibrate_row(
    terms: list[dict], cases: list[Case], row: str = "full", max_false: float = 0.10, base: AdaptiveConfig | None = None
) -> tuple[AdaptiveConfig, dict]:
    """k1, add_floor, then k2, del_ceiling: the insertion settings that find the most removals while at most
    `max_false` / 2 of the untouched sequences get an insertion, then the deletion settings that delete the most
    repeats while at most `max_false` of them get any edit; then the paper's rule without guards replaces that
    choice when it keeps within `max_false` and finds at least as much (removals + repeats, then fewer other edits).
    The candidates: `calibration_grid`. Returns (config, its rates on these cases)."""
    cfg, texts = row_config(row, base or AdaptiveConfig())
    grid = calibration_grid(terms, cases, row)
    finite = [c for _, c in grid["delete"] if math.isfinite(c)]
    ceiling_off = min(finite) / 2  # no deletion while the insertion settings are chosen

    def score(c: AdaptiveConfig) -> dict:
        return outcomes(terms, cases, c, texts)

    best_ins = None
    for k1, floor in grid["insert"]:
        c = replace(cfg, k1=k1, add_floor=floor, del_ceiling=min(ceiling_off, floor / 2))
        r = score(c)
        if r["untouched_edited"] <= max_false / 2:
            key = (r["removal_found"] + r.get("two_removed_found", 0), -floor)
            if best_ins is None or key > best_ins[0]:
                best_ins = (key, k1, floor)
    k1, floor = (best_ins[1], best_ins[2]) if best_ins else (cfg.k1, max(f for _, f in grid["insert"]))
    best_del = None
    for k2, ceiling in grid["delete"]:
        if floor > 0 and ceiling >= floor and math.isfinite(ceiling):
            continue
        c = replace(cfg, k1=k1, add_floor=floor, k2=k2, del_ceiling=ceiling)
        r = score(c)
        if r["untouched_edited"] <= max_false:
            key = (r["duplicate_deleted"], -r["damaged_other_edits"], ceiling)
            if best_del is None or key > best_del[0]:
                best_del = (key, k2, ceiling)
    k2, ceiling = (best_del[1], best_del[2]) if best_del else (cfg.k2, ceiling_off)
    final = replace(cfg, k1=k1, add_floor=floor, k2=k2, del_ceiling=ceiling)
    rates = score(final)
    for rule in grid["rules"]:
        c = replace(cfg, k1=rule.k1, k2=rule.k2, add_floor=rule.add_floor, del_ceiling=rule.del_ceiling)
        r = score(c)
        if r["untouched_edited"] <= max_false and (_found(r), -r["damaged_other_edits"]) >= (
            _found(rates),
            -rates["damaged_other_edits"],
        ):
            final, rates = c, r
    return final, rates


def calibration_record(cfg: AdaptiveConfig, clip: str, dino: str, rates: dict, data: dict) -> dict:
    """What is stored with an encoder pair (`adaptive_calibration.json`): the encoders, the settings, the data."""
    keep = ("k1", "k2", "add_floor", "del_ceiling")
    return {"encoders": {"clip": clip, "dino": dino}, "config": {k: asdict(cfg)[k] for k in keep},
            "rates_on_calibration_data": rates, "data": data}  # fmt: skip


def truth_sequences(split_seed: int, per_domain: int, size: int = 64):
    """`per_domain` sequences of every synthetic domain from one corpus split (1: validation, 2: calibration)."""
    return [generate_sequence(d, sequence_seed(split_seed, d, i), size) for d in DOMAINS for i in range(per_domain)]


def benchmark(
    scorer,
    per_condition: int = 200,
    calib_per_condition: int = 120,
    seed: int = 0,
    stored: AdaptiveConfig | None = None,
) -> dict:
    """Calibrate every row on split 2, measure it on split 1 (and the shipped defaults, the paper's rule, the stored
    settings when given, the oracles); JSON-ready."""
    per_domain = -(-per_condition // len(DOMAINS))
    test_seqs = truth_sequences(1, per_domain)
    calib_seqs = truth_sequences(2, -(-calib_per_condition // len(DOMAINS)))
    test_cases, calib_cases = (
        make_cases(test_seqs, per_condition, seed),
        make_cases(calib_seqs, calib_per_condition, seed + 1),
    )
    test_terms, calib_terms = case_terms(scorer, test_seqs, test_cases), case_terms(scorer, calib_seqs, calib_cases)
    counts = {c: sum(x.condition == c for x in test_cases) for c in CONDITIONS}
    fixed = {"shipped defaults (not recalibrated)": AdaptiveConfig(), PAPER_ROW: PAPER_RULE}
    if stored is not None:
        fixed[STORED_ROW] = stored
    rows = {
        name: {"config": asdict(c), "rates": outcomes(test_terms, test_cases, c, True)} for name, c in fixed.items()
    }
    for row in ROWS:
        cfg, _ = calibrate_row(calib_terms, calib_cases, row)
        rows[row] = {"config": asdict(cfg), "rates": outcomes(test_terms, test_cases, cfg, ROWS[row][1])}
    cfg, _ = calibrate_row(oracle_terms(calib_seqs, calib_cases), calib_cases)
    oracle = oracle_terms(test_seqs, test_cases)
    rows[ORACLE] = {"config": asdict(cfg), "rates": outcomes(oracle, test_cases, cfg, True)}
    rows[ORACLE_PAPER] = {"config": asdict(PAPER_RULE), "rates": outcomes(oracle, test_cases, PAPER_RULE, True)}
    steps = step_oracle_terms(test_seqs, test_cases)
    rows[STEP_ORACLE] = {"config": asdict(PAPER_RULE), "rates": outcomes(steps, test_cases, PAPER_RULE, True)}
    return {"cases_per_condition": counts, "test_split": 1, "calibration_split": 2, "rows": rows}
