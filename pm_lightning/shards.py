"""`python -m pm_lightning.shards`: raw sequences (folder or MakeAnything format) -> WebDataset shards."""

from __future__ import annotations

import argparse
import os
import sys

from pm_lightning.core import validate as v
from pm_lightning.data.importers import ORDERS, PAD_MODES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see docs/DATA.md)."""
    p = v.Parser(prog="python -m pm_lightning.shards", description=__doc__)
    p.add_argument("--src", type=v.existing_dir, required=True, help="input root")
    p.add_argument("--out", type=v.output_dir, required=True, help="output directory for shard-*.tar and index.json")
    p.add_argument(
        "--format", choices=("folder", "makeanything"), default="folder", help="input layout (default: folder)"
    )
    p.add_argument(
        "--frames", type=int, choices=(9, 4), default=9, help="makeanything: frames per grid, 9 -> 3x3, 4 -> 2x2"
    )
    p.add_argument(
        "--order",
        choices=ORDERS,
        default="s",
        help="makeanything: 's' = row 0 left-to-right (ours); 'reverse-s' = row 0 right-to-left (ɔ)",
    )
    p.add_argument(
        "--domain-names", default=None, help="makeanything: comma-separated names for --lora_up_cur indices 0,1,..."
    )
    p.add_argument("--size", type=v.FRAME_SIDE, default=64, help="frame side in px (default 64)")
    p.add_argument("--pad", choices=PAD_MODES, default="white", help="fill for non-square frames (default white)")
    p.add_argument("--max-per-shard", type=v.POSITIVE_INT, default=1000, help="samples per tar (default 1000)")
    p.add_argument("--workers", type=v.WORKERS, default=min(8, os.cpu_count() or 1), help="rendering processes")
    p.add_argument(
        "--shuffle-seed",
        type=v.Rule(int, 0, 2**32 - 1, extra=(-1,)),
        default=0,
        help="seed of the write-order permutation; -1 keeps sorted key order",
    )
    p.add_argument("--strict", action="store_true", help="any skipped input is an error; nothing is written")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the import; 0 when something was written, 1 otherwise."""
    args = parse_args(argv)
    from pm_lightning.data.importers import discover_folder, discover_makeanything
    from pm_lightning.data.shard_writer import ShardConfig, ShardError, write_shards

    if args.format == "folder":
        items = discover_folder(args.src)
    else:
        names = [n.strip() for n in args.domain_names.split(",")] if args.domain_names else None
        items = discover_makeanything(args.src, frames=args.frames, order=args.order, domain_names=names)
    seed = None if args.shuffle_seed < 0 else args.shuffle_seed
    try:
        cfg = ShardConfig(args.size, args.max_per_shard, args.strict, args.pad, args.workers, seed)
        report = write_shards(items, args.out, cfg)
    except (ShardError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote {report.total} sequences in {len(report.shards)} shards to {args.out} "
        f"({len(report.skipped)} skipped); domains: {dict(sorted(report.domains.items()))}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
