"""The guard sweep of the adaptive steps on the synthetic corpus (ground truth known).

    python -m pm_lightning.calibrate_adaptive --guard-sweep [--per-domain 20] [--max-false 0.1] [--json FILE]

Measures Delta for true adjacent pairs, pairs with frames removed and repeated frames, and picks
each absolute guard as the loosest value that edits at most `max_false` of the true sequences
(docs/ADAPTIVE.md has the figures). The calibration of k1, k2 and the guards together, on held-out damaged
sequences, is `eval/adaptive_truth.py` (the command's default mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pm_lightning.core.progress import progress_bar
from pm_lightning.data.near_duplicates import near_duplicate
from pm_lightning.data.synthetic_corpus import DOMAINS, generate_sequence, sequence_seed
from pm_lightning.inference.adaptive import Scorer
from pm_lightning.inference.adaptive_rule import (
    AdaptiveConfig,
    Thresholds,
    combine,
    effective_weights,
    global_delta,
    local_delta,
    semantic_delta,
    thresholds,
)

# ---------------------------------------------------------------- calibration of the guards


def best_split(low: Sequence[float], high: Sequence[float]) -> tuple[float, float]:
    """(threshold, balanced error): the midpoint between sorted values that best separates low from high."""
    values = sorted(set(low) | set(high))
    cuts = [(a + b) / 2 for a, b in zip(values, values[1:])] or values
    lo, hi = torch.tensor(list(low)), torch.tensor(list(high))

    def error(c: float) -> float:
        return 0.5 * float((lo > c).float().mean() + (hi <= c).float().mean())

    best = min(cuts, key=lambda c: (error(c), -c))
    return best, error(best)


def _variants(n: int) -> list[tuple[str, list[int], dict]]:
    """Index orders of one n-frame ground truth (indices >= n are near-duplicates of index - n) and the right answer."""
    out = [("true", list(range(n)), {})]
    for k in range(1, n - 1):  # one frame missing: insert 1 at pair k-1
        out.append(("gap1", [i for i in range(n) if i != k], {"pair": k - 1, "n": 1}))
    for k in range(1, n - 2):  # two frames missing: insert 2 at pair k-1
        out.append(("gap2", [i for i in range(n) if i not in (k, k + 1)], {"pair": k - 1, "n": 2}))
    for k in range(n):  # frame k repeated (JPEG near-duplicate): delete one of the two
        out.append(("dup", list(range(k + 1)) + [n + k] + list(range(k + 1, n)), {"frames": (k, k + 1)}))
    return out


def corpus_sequences(
    scorer: Scorer, per_domain: int = 20, size: int = 64, seed: int = 1, cfg: AdaptiveConfig | None = None
) -> dict[str, list[tuple[str, torch.Tensor, dict]]]:
    """{"text"|"no_text": [(kind, pair Deltas, answer)]} for every ground-truth sequence of the synthetic corpus
    (split `seed`, every domain) and its damaged variants (`_variants`): the input of the guard calibration."""
    cfg = cfg or AdaptiveConfig()
    out: dict[str, list] = {"text": [], "no_text": []}
    jobs = [(domain, i) for domain in DOMAINS for i in range(per_domain)]
    for domain, i in progress_bar(jobs, desc="guard sweep", unit="seq"):
        seq = generate_sequence(domain, sequence_seed(seed, domain, i), size)
        n = len(seq.frames)
        v, p = scorer.image_features(seq.frames + [near_duplicate(f) for f in seq.frames])  # (2n, D), (2n, P, E)
        u = scorer.text_features(seq.steps)  # (n, D)
        for kind, order, answer in _variants(n):
            terms = {
                "glob": global_delta(v[order]),
                "loc": local_delta(p[order]),
                "sem": semantic_delta(u[[k % n for k in order]]),
            }
            for mode, has in (("text", True), ("no_text", False)):
                w = effective_weights(cfg, has)
                out[mode].append((kind, combine({**terms, "sem": terms["sem"] if has else None}, w), answer))
    return out


def guard_rates(
    items: list[tuple[str, list[float], dict, Thresholds]], add_floor: float, del_ceiling: float
) -> dict[str, float]:
    """Round-one outcome rates of the decision rule with these guards: false edits on true sequences, hits on damaged.

    `items`: (kind, pair Deltas, answer, the sequence's relative thresholds); the guards are applied here.
    """
    counts = {k: [0, 0] for k in ("false_insert", "false_delete", "gap1", "gap2", "dup")}
    for kind, delta, answer, thr in items:
        add, delete = max(thr.tau_add, add_floor), min(thr.tau_del, del_ceiling)
        ins = [i for i, d in enumerate(delta) if d > add]
        dels = [i for i, d in enumerate(delta) if d < delete]
        if kind == "true":
            for key, edits in (("false_insert", ins), ("false_delete", dels)):
                counts[key][0] += bool(edits)
                counts[key][1] += 1
        elif kind in ("gap1", "gap2"):
            counts[kind][0] += ins == [answer["pair"]]
            counts[kind][1] += 1
        else:
            counts["dup"][0] += dels == [answer["frames"][0]]
            counts["dup"][1] += 1
    return {k: hit / max(total, 1) for k, (hit, total) in counts.items()}


def sweep_guards(scorer: Scorer, per_domain: int = 20, size: int = 64, seed: int = 1, max_false: float = 0.1) -> dict:
    """Sweep the guards on the corpus; each guard is the loosest one that edits at most `max_false` of the
    true sequences (docs/ADAPTIVE.md): the guards exist to keep good sequences unchanged.

    add_floor: false = a true sequence gets any insertion; hit = a sequence with one (two) frame(s)
    missing gets exactly one insertion, at that pair. del_ceiling: false = a true sequence gets any
    deletion; hit = a repeated frame gets exactly one deletion, in its pair. two_frame_ratio: the best
    split of Delta / insert threshold between one- and two-frame gaps.
    """
    cfg = AdaptiveConfig()
    data = corpus_sequences(scorer, per_domain, size, seed, cfg)
    result = {}
    for mode, raw in data.items():
        items = [(kind, delta.tolist(), answer, thresholds(delta, cfg)) for kind, delta, answer in raw]
        floors = [round(0.02 * k, 2) for k in range(0, 31)]
        ceilings = [round(0.005 * k, 3) for k in range(0, 31)]
        add_rows = {f: guard_rates(items, f, 0.0) for f in floors}
        del_rows = {c: guard_rates(items, 1.0, c) for c in ceilings}
        add = (
            min(f for f in floors if add_rows[f]["false_insert"] <= max_false)
            if any(add_rows[f]["false_insert"] <= max_false for f in floors)
            else floors[-1]
        )
        ceil = max(c for c in ceilings if del_rows[c]["false_delete"] <= max_false)
        ratios = {"gap1": [], "gap2": []}
        for kind, delta, answer, thr in items:
            if kind in ratios:
                bar = max(thr.tau_add, add)
                ratios[kind].append(float(delta[answer["pair"]]) / bar)
        ratio, ratio_err = best_split(ratios["gap1"], ratios["gap2"])
        pairs = {
            "duplicate": [x[a["frames"][0]] for k, x, a, _ in items if k == "dup"],
            "normal": [v for k, x, _, _ in items if k == "true" for v in x],
            "skip1": [x[a["pair"]] for k, x, a, _ in items if k == "gap1"],
            "skip2": [x[a["pair"]] for k, x, a, _ in items if k == "gap2"],
        }
        stats = {
            c: {
                q: float(torch.tensor(v).quantile(x))
                for q, x in (("p05", 0.05), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p95", 0.95))
            }
            for c, v in pairs.items()
        }
        result[mode] = {
            "pair_quantiles": stats,
            "add_floor": add,
            "del_ceiling": ceil,
            "two_frame_ratio": max(1.0, ratio),
            "two_frame_ratio_balanced_error": ratio_err,
            "add_sweep": add_rows,
            "del_sweep": del_rows,
            "sequences": sum(it[0] == "true" for it in items),
        }
    return result


def markdown_report(result: dict) -> str:
    """The sweep's tables and the chosen guards, per mode (with / without step texts), as printed by the command."""
    lines = []
    for mode, r in result.items():
        lines.append(
            f"\n### {'with step texts' if mode == 'text' else 'no step texts (Delta_sem dropped)'}, {r['sequences']} true sequences\n"
        )
        lines.append("| pair Delta | p05 | p25 | p50 | p75 | p95 |\n|---|---:|---:|---:|---:|---:|")
        for cat, q in r["pair_quantiles"].items():
            lines.append(f"| {cat} | " + " | ".join(f"{v:.3f}" for v in q.values()) + " |")
        lines.append(
            "\n| add_floor | false insert (true seq) | hit, 1 missing | hit, 2 missing |\n|---:|---:|---:|---:|"
        )
        for f, x in r["add_sweep"].items():
            lines.append(f"| {f:.2f} | {x['false_insert']:.3f} | {x['gap1']:.3f} | {x['gap2']:.3f} |")
        lines.append("\n| del_ceiling | false delete (true seq) | hit, repeated frame |\n|---:|---:|---:|")
        for c, x in r["del_sweep"].items():
            lines.append(f"| {c:.3f} | {x['false_delete']:.3f} | {x['dup']:.3f} |")
        a, d = r["add_sweep"][r["add_floor"]], r["del_sweep"][r["del_ceiling"]]
        lines.append(
            f"\nat the chosen guards: false insert {a['false_insert']:.3f}, hit 1 missing {a['gap1']:.3f}, hit 2 missing "
            f"{a['gap2']:.3f}; false delete {d['false_delete']:.3f}, hit repeated {d['dup']:.3f}"
        )
        lines.append(
            f"chosen: add_floor {r['add_floor']:.2f}, del_ceiling {r['del_ceiling']:.3f}, "
            f"two_frame_ratio {r['two_frame_ratio']:.3f} (1- vs 2-frame gaps, balanced error {r['two_frame_ratio_balanced_error']:.3f})"
        )
    return "\n".join(lines)
