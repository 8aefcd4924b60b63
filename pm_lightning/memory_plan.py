"""`python -m pm_lightning.memory_plan`: analytic per-GPU memory of a stage-1 step under DDP and FSDP2.

    python -m pm_lightning.memory_plan --gpus 8 --card-gib 48 --variant flux-dev --rank 64 --domains 21 --tokens 4608
    python -m pm_lightning.memory_plan --gpus 1 --card-gib 24 --quant int8 --text-cache --latent-cache
    python -m pm_lightning.memory_plan --json
    python -m pm_lightning.memory_plan --config experiments/fabric_toys.yaml --config experiments/presets/24gb.yaml --card-gib 24

Counts the transformer (bf16, or int8 / fp8 / NF4 weights with --quant), the text encoders (none with --text-cache),
the VAE (none with --latent-cache), activations with or without checkpointing, the alignment teacher's features, the optimizer state and the
strategy's buffers; then a table of every strategy x quantization, with and without the text cache, and the
configuration recommended for the card. With `--config`: the plan of that fit config (an experiment and its overlays,
merged in order: its strategy, GPU count, resolution, batch, adapter, caches and quantization) and its headroom.

Formulas and assumptions: `pm_lightning/scaling/memory_formulas.py` and docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import json

from pm_lightning.core import validate as v
from pm_lightning.core.config_files import load_configs
from pm_lightning.models.variants import VARIANTS


def main(argv: list[str] | None = None) -> dict:
    ap = v.Parser(prog="python -m pm_lightning.memory_plan", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--gpus", type=v.Rule(int, 1, 100_000), default=None, help="GPUs (default 8, or the --config's count)"
    )
    ap.add_argument("--card-gib", "--gpu-gb", dest="card_gib", type=v.Rule(float, 0, 100_000, lo_open=True),
                    default=48, help="GiB per GPU (A6000: 48)")  # fmt: skip
    ap.add_argument("--variant", default="flux-dev", choices=sorted(VARIANTS), help="Flux variant (its shapes)")
    ap.add_argument(
        "--kind", default="masked", help="lora, asymmetric or masked (models/adapter_config.py ADAPTER_KINDS)"
    )
    ap.add_argument("--rank", type=v.Rule(int, 1, 4096), default=64, help="LoRA rank")
    ap.add_argument("--domains", type=v.Rule(int, 1, 10_000), default=21, help="training domains (masked LoRA width)")
    ap.add_argument("--tokens", type=v.Rule(int, 1, 10**6), default=4608, help="image + text tokens per sample")
    ap.add_argument("--text-tokens", type=v.Rule(int, 0, 10**6), default=512, help="T5 tokens of the --tokens")
    ap.add_argument("--batch", type=v.Rule(int, 1, 10_000), default=1, help="samples per GPU")
    ap.add_argument("--optimizer", default="came", help="came or adamw (scaling/memory_formulas.py OPTIMIZER_STATE)")
    ap.add_argument("--no-align", action="store_true", help="no alignment teacher features")
    ap.add_argument("--no-checkpointing", action="store_true", help="keep every activation (no gradient checkpointing)")
    ap.add_argument("--text-cache", action="store_true", help="T5 + CLIP off the GPU (text_cache_only)")
    ap.add_argument("--latent-cache", action="store_true", help="VAE off the GPU (latent_cache_dir)")
    ap.add_argument("--quant", default="none", help="frozen base storage: none, int8, fp8, nf4 (quantize)")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    ap.add_argument("--config", action="append", default=[], help="a fit config, then its overlays (repeatable)")
    args = ap.parse_args(argv)
    # after parsing: torch and peft, which --help and a bad flag skip (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.models.adapter_config import KINDS, AdapterConfig
    from pm_lightning.scaling.memory_formulas import OPTIMIZER_STATE, QUANT_BYTES, Workload
    from pm_lightning.scaling.model_shapes import model_shape
    from pm_lightning.scaling.plan_report import format_options, format_table, to_json
    from pm_lightning.scaling.plan_search import options, plan_all, recommend

    for flag, value, known in (("kind", args.kind, KINDS), ("optimizer", args.optimizer, OPTIMIZER_STATE),
                               ("quant", args.quant, QUANT_BYTES)):  # fmt: skip
        if value not in known:  # checked here: the names live in the modules that import torch
            ap.error(f"argument --{flag}: invalid choice {value!r} (choose from {', '.join(known)})")
    if args.config:
        return config_main(args)
    args.gpus = args.gpus or 8
    shape = model_shape(args.variant, AdapterConfig(kind=args.kind, rank=args.rank, num_domains=args.domains))
    align_layers = 0 if args.no_align else len(VARIANTS[args.variant].align_layers or (4, 9, 14, 19, 29))
    work = Workload(
        args.tokens,
        args.text_tokens,
        args.batch,
        align_layers,
        not args.no_checkpointing,
        args.optimizer,
        text_encoders=not args.text_cache,
        quant=args.quant,
        vae=not args.latent_cache,
    )
    plans = plan_all(shape, work, args.gpus, args.card_gib)
    out = to_json(plans, shape, work)
    out["options"] = options(shape, work, args.gpus, args.card_gib)
    out["recommended"] = recommend(shape, work, args.gpus, args.card_gib)
    if args.json:
        print(json.dumps(out))
    else:
        print(format_table(plans, shape, work) + "\n\n" + format_options(shape, work, args.gpus, args.card_gib))
    return out


def config_main(args: argparse.Namespace) -> dict:
    """The plan of one fit config (`--config` ...): its table, its headroom, whether it keeps the preset margin."""
    # after parsing: the plan's modules import torch and peft (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.scaling.config_memory import HEADROOM, headroom, plan_config
    from pm_lightning.scaling.plan_report import format_table, to_json

    try:
        plan, shape, work = plan_config(load_configs(args.config), args.card_gib, args.gpus)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    out = to_json([plan], shape, work) | {"headroom": headroom(plan), "config": args.config}
    verdict = "fits" if headroom(plan) >= HEADROOM else "fits, under the 10% margin" if plan.fits else "does NOT fit"
    text = f"{format_table([plan], shape, work)}\n\n{' + '.join(args.config)}: {verdict} ({headroom(plan):.0%} of the card free)"
    print(json.dumps(out) if args.json else text)
    return out


if __name__ == "__main__":
    main()
