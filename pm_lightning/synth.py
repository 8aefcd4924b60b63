"""`python -m pm_lightning.synth --out DIR`: write the synthetic procedural corpus (`--varied-steps`: processes of
varying length shown as the same 9 or 4 frames; `--spread N`: print their change per step over N seeds)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

from pm_lightning.core import validate as v
from pm_lightning.core.progress import add_progress_flag, apply_progress_flag
from pm_lightning.data.synthetic_corpus import (
    DOMAINS,
    HELDOUT_DOMAINS,
    TRAIN_PER_DOMAIN,
    TRAIN_SEED,
    contact_sheet,
    process_spread,
    write_corpus,
)
from pm_lightning.data.synthetic_varied import STEP_RANGES


def domain_size(text: str) -> tuple[str, int]:
    """`DOMAIN=N` -> (domain, N): a known synthetic domain and a count of at least 1."""
    name, sep, count = text.partition("=")
    if not sep or name not in DOMAINS or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected DOMAIN=N with N >= 1 and DOMAIN one of {', '.join(DOMAINS)}"
        )
    return name, int(count)


def spread_table(seeds: int) -> str:
    """Markdown table of the varied mode's change per step (fraction of pixels changed at 64 px) per domain over
    seeds 0 .. seeds-1: the step range, the median step, and the worst step's ratio to its sequence's median."""
    lines = [
        "| domain | frames | process steps S | median step (% pixels) | worst max/median | worst median/min |",
        "|---|---|---|---|---|---|",
    ]
    for name, frames in DOMAINS.items():
        spreads = [process_spread(name, seed) for seed in range(seeds)]
        medians = [statistics.median(s) for s in spreads]
        up = max(max(s) / m for s, m in zip(spreads, medians))
        down = max(m / min(s) for s, m in zip(spreads, medians))
        lo, hi = STEP_RANGES[name]
        lines.append(
            f"| {name} | {frames} | {lo}-{hi} | {100 * statistics.median(medians):.1f} | {up:.2f} | {down:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, write the corpus (and optionally a preview sheet), print the counts."""
    p = v.Parser(prog="python -m pm_lightning.synth", description=__doc__)
    p.add_argument("--out", type=v.output_dir, help="output folder: OUT/<domain>/<seq-id>/00.png ... meta.json")
    p.add_argument(
        "--per-domain",
        type=v.Rule(int, 1, 100_000),
        default=TRAIN_PER_DOMAIN,
        help=f"sequences per domain (default {TRAIN_PER_DOMAIN})",
    )
    p.add_argument("--size", type=v.FRAME_SIDE, default=64, help="frame size in pixels (default 64)")
    p.add_argument("--seed", type=v.SEED, default=TRAIN_SEED, help=f"corpus seed (default {TRAIN_SEED})")
    p.add_argument("--domains", nargs="+", choices=list(DOMAINS), help="only these domains (default: all)")
    p.add_argument("--no-held-out", action="store_true", help="leave out the held-out domains (training split)")
    p.add_argument(
        "--sizes",
        nargs="+",
        type=domain_size,
        metavar="DOMAIN=N",
        help="a count per domain instead of --per-domain / --domains, e.g. a long-tailed split: lego=1000 cake=10",
    )
    p.add_argument("--preview", type=v.output_file, help="also save a contact sheet PNG: one row of grids per domain")
    p.add_argument(
        "--varied-steps",
        action="store_true",
        help="processes of varying length (S steps in each domain's range, shown as its 9 or 4 frames)",
    )
    p.add_argument(
        "--spread",
        type=v.Rule(int, 1, 10_000),
        metavar="N",
        help="print the varied mode's change per step per domain over seeds 0..N-1 (a markdown table) and exit",
    )
    add_progress_flag(p)
    args = p.parse_args(argv)
    apply_progress_flag(args)
    if args.spread is not None:
        print(spread_table(args.spread))
        return {}
    if args.out is None and args.preview is None:
        p.error("give --out DIR and/or --preview FILE (or --spread N)")
    if args.sizes and (args.domains or args.no_held_out or args.per_domain != TRAIN_PER_DOMAIN):
        p.error("--sizes names the domains and their counts: give it without --per-domain, --domains, --no-held-out")
    if args.no_held_out:
        args.domains = [d for d in (args.domains or DOMAINS) if d not in HELDOUT_DOMAINS]
    counts = {}
    if args.out is not None:
        start = time.perf_counter()
        per_domain = dict(args.sizes) if args.sizes else args.per_domain
        counts = write_corpus(args.out, per_domain, args.size, args.seed, args.domains, varied=args.varied_steps)
        print(json.dumps({"out": str(args.out), "counts": counts, "seconds": round(time.perf_counter() - start, 1)}))
    if args.preview is not None:
        contact_sheet(args.domains, size=args.size, seed=args.seed, varied=args.varied_steps).save(args.preview)
        print(f"preview -> {args.preview}")
    return counts


if __name__ == "__main__":
    main()
