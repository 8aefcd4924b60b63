"""Calibrate the adaptive steps for an encoder pair on ground truth: `python -m pm_lightning.calibrate_adaptive`.

    python -m pm_lightning.calibrate_adaptive                      # tiny evaluators -> data/tiny-eval/adaptive_calibration.json
    python -m pm_lightning.calibrate_adaptive --clip ViT-B-32/openai --dino facebook/dinov2-base --out dinov2.json
    python -m pm_lightning.calibrate_adaptive --guard-sweep [--per-domain 20] [--max-false 0.1] [--json FILE]
    python -m pm_lightning.calibrate_adaptive --write-docs         # make bench-adaptive: docs/ADAPTIVE.md's tables

Chooses k1, k2 and the guards (add_floor, del_ceiling) on damaged synthetic sequences of every domain (split 2),
then measures them on never-used ones (split 1: untouched, one frame removed, one duplicated, two removed), also
with each Delta term left out (`eval/adaptive_truth.py`). The settings are stored with the encoders they belong
to; `generate` / `adapt` read them for those encoders only. `--guard-sweep` sweeps the two guards alone at the
shipped k1 / k2 and prints its tables (`eval/guard_sweep.py`). `--write-docs` runs both (the guard sweep with
its defaults) and regenerates every table of docs/ADAPTIVE.md between `<!-- adaptive:begin NAME -->` and
`<!-- adaptive:end -->`; it leaves the stored calibration file alone (the table says what the grid would choose).
"""

from __future__ import annotations

import argparse
import json
import sys

from pm_lightning.core import validate as v
from pm_lightning.core.progress import add_progress_flag, apply_progress_flag


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = v.Parser(prog="python -m pm_lightning.calibrate_adaptive", description=__doc__.split("\n")[0])
    p.add_argument("--clip", default="tiny", help="CLIP spec (Encoders.load)")
    p.add_argument("--dino", default="tiny", help="DINO spec (Encoders.load)")
    p.add_argument("--per-condition", type=v.Rule(int, 1, 100_000), default=200, help="test cases per condition")
    p.add_argument(
        "--out", type=v.output_file, default=None, help="calibration file (default: the tiny evaluators' folder)"
    )
    p.add_argument(
        "--write-docs", action="store_true", help="regenerate docs/ADAPTIVE.md's tables (not the calibration file)"
    )
    sweep = p.add_argument_group("the guard sweep (--guard-sweep)")
    sweep.add_argument("--guard-sweep", action="store_true", help="sweep add_floor / del_ceiling alone and print")
    sweep.add_argument("--per-domain", type=v.Rule(int, 1, 100_000), default=20, help="sequences per synthetic domain")
    sweep.add_argument("--size", type=v.FRAME_SIDE, default=64, help="frame size in px")
    sweep.add_argument("--seed", type=v.SEED, default=1, help="corpus split seed (1 = validation, never trained on)")
    sweep.add_argument(
        "--max-false", type=v.FRACTION, default=0.1, help="largest share of true sequences a guard may let be edited"
    )
    sweep.add_argument("--json", type=v.output_file, default=None, help="also write the sweep's result as JSON here")
    add_progress_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    apply_progress_flag(args)
    # after parsing: torch and the evaluators' stack, 4.4 s that --help and a bad flag skip (docs/ARCHITECTURE.md, "Start-up")
    import torch

    from pm_lightning.eval.adaptive_docs import grid_choice, guard_tables, markdown_table, write_docs
    from pm_lightning.eval.adaptive_truth import benchmark, calibration_record
    from pm_lightning.eval.guard_sweep import markdown_report, sweep_guards
    from pm_lightning.inference.adaptive import EncoderScorer
    from pm_lightning.inference.adaptive_rule import AdaptiveConfig
    from pm_lightning.inference.adaptive_settings import calibration_file, read_settings
    from pm_lightning.models.encoders import Encoders

    torch.set_num_threads(1)
    scorer = EncoderScorer(Encoders.load(clip=args.clip, dino=args.dino))
    if args.guard_sweep:
        result = sweep_guards(scorer, args.per_domain, args.size, args.seed, args.max_false)
        print(markdown_report(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return
    out = args.out or calibration_file(args.clip, args.dino)
    if out is None and not args.write_docs:
        raise SystemExit("error: give --out FILE for encoders other than the tiny ones")
    stored = None
    if args.write_docs and out is not None and out.is_file():
        stored = AdaptiveConfig.from_dict(read_settings(out, args.clip, args.dino))
    result = benchmark(scorer, args.per_condition, stored=stored)
    table = markdown_table(result)
    print(table)
    if args.write_docs:
        sweep = sweep_guards(scorer, args.per_domain, args.size, args.seed, args.max_false)
        command = " ".join(
            ["python -m pm_lightning.calibrate_adaptive", *(sys.argv[1:] if argv is None else argv)]
        ).strip()
        lead = f"`{command}` (`make bench-adaptive`), {result['cases_per_condition']['untouched']} cases per condition:"
        write_docs({"ground-truth": f"{lead}\n\n{table}\n\n{grid_choice(result, stored)}", **guard_tables(sweep)})
        print(f"wrote the tables of docs/ADAPTIVE.md; {grid_choice(result, stored)}")
        return
    full = result["rows"]["full"]
    record = calibration_record(AdaptiveConfig(**full["config"]), args.clip, args.dino, full["rates"], result)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
