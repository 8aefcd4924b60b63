"""Calibrate the adaptive steps for an encoder pair on ground truth: `python -m pm_lightning.calibrate_adaptive`.

    python -m pm_lightning.calibrate_adaptive                      # tiny evaluators -> data/tiny-eval/adaptive_calibration.json
    python -m pm_lightning.calibrate_adaptive --clip ViT-B-32/openai --dino facebook/dinov2-base --out dinov2.json

Chooses k1, k2 and the guards (add_floor, del_ceiling) on damaged synthetic sequences of every domain (split 2),
then measures them on never-used ones (split 1: untouched, one frame removed, one duplicated, two removed), also
with each Delta term left out (`eval/adaptive_truth.py`). The settings are stored with the encoders they belong
to; `generate` / `adapt` read them for those encoders only. `--write-docs` refreshes docs/ADAPTIVE.md's table.
"""

from __future__ import annotations

import json

from pm_lightning.core import validate as v


def main(argv: list[str] | None = None) -> None:
    p = v.Parser(prog="python -m pm_lightning.calibrate_adaptive", description=__doc__.split("\n")[0])
    p.add_argument("--clip", default="tiny", help="CLIP spec (Encoders.load)")
    p.add_argument("--dino", default="tiny", help="DINO spec (Encoders.load)")
    p.add_argument("--per-condition", type=v.Rule(int, 1, 100_000), default=200, help="test cases per condition")
    p.add_argument(
        "--out", type=v.output_file, default=None, help="calibration file (default: the tiny evaluators' folder)"
    )
    p.add_argument("--write-docs", action="store_true", help="rewrite the ground-truth table of docs/ADAPTIVE.md")
    args = p.parse_args(argv)
    import torch

    from pm_lightning.eval.adaptive_truth import benchmark, calibration_record, markdown_table, write_docs
    from pm_lightning.eval.encoders import Encoders
    from pm_lightning.inference.adaptive import AdaptiveConfig, EncoderScorer
    from pm_lightning.inference.adaptive_settings import calibration_file

    torch.set_num_threads(1)
    result = benchmark(EncoderScorer(Encoders.load(clip=args.clip, dino=args.dino)), args.per_condition)
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
