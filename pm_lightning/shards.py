"""`python -m pm_lightning.shards`: raw sequences (folder, MakeAnything or grid-image format) -> WebDataset shards."""

from __future__ import annotations

import argparse
import os
import sys

from pm_lightning.core import validate as v
from pm_lightning.core.progress import add_progress_flag, apply_progress_flag
from pm_lightning.data.importers import ORDERS, PAD_MODES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see docs/DATA.md)."""
    p = v.Parser(prog="python -m pm_lightning.shards", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--src", type=v.existing_dir, help="input root (--format folder or makeanything)")
    src.add_argument(
        "--images",
        type=v.existing_dir,
        nargs="+",
        metavar="DIR",
        help="folders of grid images with same-name .txt captions, one domain each (layout: --frames or layout.json)",
    )
    p.add_argument("--domain", default=None, help="--images: the domain (default: each folder's name)")
    p.add_argument("--out", type=v.output_dir, required=True, help="output directory for shard-*.tar and index.json")
    p.add_argument(
        "--format", choices=("folder", "makeanything"), default="folder", help="input layout (default: folder)"
    )
    p.add_argument(
        "--frames",
        type=int,
        choices=(9, 4),
        default=None,
        help="makeanything / --images: frames per grid, 9 -> 3x3, 4 -> 2x2 (default: makeanything 9, --images layout.json)",
    )
    p.add_argument(
        "--order",
        choices=ORDERS,
        default=None,
        help="makeanything / --images: 's' = row 0 left-to-right (ours, the default); 'reverse-s' = row 0 right-to-left (ɔ)",
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
    add_progress_flag(p)
    args = p.parse_args(argv)
    if args.domain and not args.images:
        p.error("--domain names the domain of --images folders; --src takes domains from its sub-folders or tags")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the import; 0 when something was written, 1 otherwise."""
    args = parse_args(argv)
    apply_progress_flag(args)
    from pm_lightning.data.shard_writer import ShardConfig, ShardError, write_shards

    seed = None if args.shuffle_seed < 0 else args.shuffle_seed
    try:
        items = discover(args)
        cfg = ShardConfig(args.size, args.max_per_shard, args.strict, args.pad, args.workers, seed)
        report = write_shards(items, args.out, cfg)
    except (ShardError, ValueError) as err:  # BadInput is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote {report.total} sequences in {len(report.shards)} shards to {args.out} "
        f"({len(report.skipped)} skipped); domains: {dict(sorted(report.domains.items()))}",
        file=sys.stderr,
    )
    return 0


def discover(args: argparse.Namespace):
    """The sequences (and skipped inputs) of the chosen input format."""
    from pm_lightning.data.image_folder import discover_image_folder
    from pm_lightning.data.importers import discover_folder, discover_makeanything

    if args.images:
        return [item for d in args.images for item in discover_image_folder(d, args.frames, args.order, args.domain)]
    if args.format == "folder":
        return discover_folder(args.src)
    names = [n.strip() for n in args.domain_names.split(",")] if args.domain_names else None
    return discover_makeanything(args.src, frames=args.frames or 9, order=args.order or "s", domain_names=names)


if __name__ == "__main__":
    sys.exit(main())
