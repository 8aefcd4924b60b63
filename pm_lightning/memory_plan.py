"""`python -m pm_lightning.memory_plan`: analytic per-GPU memory of a stage-1 step under DDP, FSDP2 and ZeRO-2.

    python -m pm_lightning.memory_plan --gpus 8 --gpu-gb 48 --variant flux-dev --rank 64 --domains 21 --tokens 4608
    python -m pm_lightning.memory_plan --json

Formulas and assumptions: `pm_lightning/training/memory_estimate.py` and docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import json

from pm_lightning.models.adapters import AdapterConfig
from pm_lightning.training.memory_estimate import (
    OPTIMIZER_STATE,
    Workload,
    format_table,
    model_shape,
    plan_all,
    to_json,
)


def main(argv: list[str] | None = None) -> dict:
    from pm_lightning.models.adapters import KINDS
    from pm_lightning.models.variants import VARIANTS

    ap = argparse.ArgumentParser(prog="python -m pm_lightning.memory_plan", description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--gpu-gb", type=float, default=48, help="memory per GPU, GiB (A6000: 48)")
    ap.add_argument("--variant", default="flux-dev", choices=sorted(VARIANTS))
    ap.add_argument("--kind", default="masked", choices=KINDS)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--domains", type=int, default=21)
    ap.add_argument("--tokens", type=int, default=4608, help="image + text tokens per sample")
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1, help="samples per GPU")
    ap.add_argument("--optimizer", default="came", choices=sorted(OPTIMIZER_STATE))
    ap.add_argument("--no-align", action="store_true")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    shape = model_shape(args.variant, AdapterConfig(kind=args.kind, rank=args.rank, num_domains=args.domains))
    align_layers = 0 if args.no_align else len(VARIANTS[args.variant].align_layers or (4, 9, 14, 19, 29))
    work = Workload(args.tokens, args.text_tokens, args.batch, align_layers, not args.no_checkpointing, args.optimizer)
    plans = plan_all(shape, work, args.gpus, args.gpu_gb)
    out = to_json(plans, shape, work)
    print(json.dumps(out) if args.json else format_table(plans, shape, work))
    return out


if __name__ == "__main__":
    main()
