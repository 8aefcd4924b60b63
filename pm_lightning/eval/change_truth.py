"""Do the Delta terms see what changed? Rank correlation between each Delta term of a frame pair and the synthetic
generator's ground-truth amount of change between the two frames (`Sequence.change_between`: the elements the
steps in between added or painted over).

Pairs (i, i + g) for g in `gaps` of every sequence; Spearman's rho (torchmetrics) per sequence (averaged: what the
adaptive steps need, since their thresholds are relative to one sequence), per domain (averaged) and pooled.
"""

from __future__ import annotations

import statistics

import torch
from torchmetrics.functional import spearman_corrcoef

from pm_lightning.data.synthetic_corpus import Sequence
from pm_lightning.inference.adaptive_rule import AdaptiveConfig, batched_chamfer, effective_weights


def pair_table(scorer, seqs: list[Sequence], gaps=(1, 2, 3), weights: dict | None = None) -> list[dict]:
    """One row per frame pair: {domain, seq, i, j, change, glob, loc, sem, delta} (delta: the weighted sum)."""
    weights = weights or effective_weights(AdaptiveConfig(), has_sem=True)
    rows = []
    for s, seq in enumerate(seqs):
        v, tokens = scorer.image_features(seq.frames)  # (n, D), (n, P, E)
        u = scorer.text_features(seq.steps)  # (n, D)
        for g in gaps:
            for i in range(len(seq.frames) - g):
                j = i + g
                glob = float(1 - (v[i] * v[j]).sum())
                loc = float(_chamfer(tokens[i], tokens[j]))
                sem = float(1 - (u[i] * u[j]).sum())
                delta = weights["glob"] * glob + weights["loc"] * loc + weights["sem"] * sem
                rows.append(dict(domain=seq.domain, seq=s, i=i, j=j, change=seq.change_between(i, j),
                                 glob=glob, loc=loc, sem=sem, delta=delta))  # fmt: skip
    return rows


def _chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return batched_chamfer(a[None], b[None])[0]


def _rho(rows: list[dict], term: str) -> float | None:
    if len(rows) < 3 or len({r["change"] for r in rows}) < 2 or len({r[term] for r in rows}) < 2:
        return None
    x = torch.tensor([r[term] for r in rows], dtype=torch.float64)
    y = torch.tensor([float(r["change"]) for r in rows], dtype=torch.float64)
    return float(spearman_corrcoef(x, y))


def correlations(rows: list[dict], terms=("loc", "glob", "sem", "delta")) -> dict:
    """{term: {per_sequence, per_domain, pooled, by_domain}} Spearman's rho against the ground-truth change."""
    out = {}
    for term in terms:
        by_seq: dict[int, list[dict]] = {}
        by_dom: dict[str, list[dict]] = {}
        for r in rows:
            by_seq.setdefault(r["seq"], []).append(r)
            by_dom.setdefault(r["domain"], []).append(r)
        seq_rho = [x for x in (_rho(g, term) for g in by_seq.values()) if x is not None]
        dom_rho = {d: _rho(g, term) for d, g in by_dom.items()}
        valid = [x for x in dom_rho.values() if x is not None]
        out[term] = {
            "per_sequence": round(statistics.mean(seq_rho), 4) if seq_rho else None,
            "per_domain": round(statistics.mean(valid), 4) if valid else None,
            "pooled": None if _rho(rows, term) is None else round(_rho(rows, term), 4),
            "by_domain": {d: None if x is None else round(x, 4) for d, x in dom_rho.items()},
        }
    return out
