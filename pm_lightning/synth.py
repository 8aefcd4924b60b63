"""`python -m pm_lightning.synth --out DIR`: write the synthetic procedural corpus."""

from __future__ import annotations

import argparse
import json
import time

from pm_lightning.core import validate as v
from pm_lightning.core.progress import add_progress_flag, apply_progress_flag
from pm_lightning.data.synthetic_corpus import (
    DOMAINS,
    HELDOUT_DOMAINS,
    TRAIN_PER_DOMAIN,
    TRAIN_SEED,
    contact_sheet,
    write_corpus,
)


def domain_size(text: str) -> tuple[str, int]:
    """`DOMAIN=N` -> (domain, N): a known synthetic domain and a count of at least 1."""
    name, sep, count = text.partition("=")
    if not sep or name not in DOMAINS or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected DOMAIN=N with N >= 1 and DOMAIN one of {', '.join(DOMAINS)}"
        )
    return name, int(count)


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
    add_progress_flag(p)
    args = p.parse_args(argv)
    apply_progress_flag(args)
    if args.out is None and args.preview is None:
        p.error("give --out DIR and/or --preview FILE")
    if args.sizes and (args.domains or args.no_held_out or args.per_domain != TRAIN_PER_DOMAIN):
        p.error("--sizes names the domains and their counts: give it without --per-domain, --domains, --no-held-out")
    if args.no_held_out:
        args.domains = [d for d in (args.domains or DOMAINS) if d not in HELDOUT_DOMAINS]
    counts = {}
    if args.out is not None:
        start = time.perf_counter()
        per_domain = dict(args.sizes) if args.sizes else args.per_domain
        counts = write_corpus(args.out, per_domain, args.size, args.seed, args.domains)
        print(json.dumps({"out": str(args.out), "counts": counts, "seconds": round(time.perf_counter() - start, 1)}))
    if args.preview is not None:
        contact_sheet(args.domains, size=args.size, seed=args.seed).save(args.preview)
        print(f"preview -> {args.preview}")
    return counts


if __name__ == "__main__":
    main()
