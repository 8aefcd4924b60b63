"""Calibrate the adaptive steps for an encoder pair on ground truth: `python -m pm_lightning.calibrate_adaptive`.

    python -m pm_lightning.calibrate_adaptive                      # tiny evaluators -> data/tiny-eval/adaptive_calibration.json
    python -m pm_lightning.calibrate_adaptive --clip ViT-B-32/openai --dino facebook/dinov2-base --out dinov2.json
    python -m pm_lightning.calibrate_adaptive --guard-sweep [--per-domain 20] [--max-false 0.1] [--json FILE]

Chooses k1, k2 and the guards (add_floor, del_ceiling) on damaged synthetic sequences of every domain (split 2),
then measures them on never-used ones (split 1: untouched, one frame removed, one duplicated, two removed), also
with each Delta term left out (`eval/adaptive_truth.py`). The settings are stored with the encoders they belong
to; `generate` / `adapt` read them for those encoders only. `--write-docs` refreshes docs/ADAPTIVE.md's table.
`--guard-sweep` sweeps the two guards alone at the shipped k1 / k2 and prints the tables of docs/ADAPTIVE.md,
"Calibration of the guards" (`eval/guard_sweep.py`).
"""

from __future__ import annotations

import argparse
import json

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
    p.add_argument("--write-docs", action="store_true", help="rewrite the ground-truth table of docs/ADAPTIVE.md")
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

    from pm_lightning.eval.adaptive_truth import benchmark, calibration_record, markdown_table, write_docs
    from pm_lightning.eval.guard_sweep import markdown_report, sweep_guards
    from pm_lightning.inference.adaptive import EncoderScorer
    from pm_lightning.inference.adaptive_rule import AdaptiveConfig
    from pm_lightning.inference.adaptive_settings import calibration_file
    from pm_lightning.models.encoders import Encoders

    torch.set_num_threads(1)
    scorer = EncoderScorer(Encoders.load(clip=args.clip, dino=args.dino))
    if args.guard_sweep:
        result = sweep_guards(scorer, args.per_domain, args.size, args.seed, args.max_false)
        print(markdown_report(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return
    result = benchmark(scorer, args.per_condition)
    table = markdown_table(result)
    print(table)
    full = result["rows"]["full"]
    record = calibration_record(AdaptiveConfig(**full["config"]), args.clip, args.dino, full["rates"], result)
    out = args.out or calibration_file(args.clip, args.dino)
    if out is None:
        raise SystemExit("error: give --out FILE for encoders other than the tiny ones")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    if args.write_docs:
        write_docs(table, " ".join(["python -m pm_lightning.calibrate_adaptive", *(argv or [])]).strip())


if __name__ == "__main__":
    main()
