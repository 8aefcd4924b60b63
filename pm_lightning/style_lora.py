"""Train a style LoRA on single pictures of one domain: `python -m pm_lightning.style_lora --domain origami --out F`.

    python -m pm_lightning.style_lora --domain origami --out runs/style/origami.safetensors
    python -m pm_lightning.generate --prompt "an origami crane" --domain origami \\
        --extra-lora runs/style/origami.safetensors:0.8 --out outputs/origami

MakeAnything's route to an unseen domain: its procedural LoRA with a community style LoRA stacked on top. This
trains such a style LoRA here (pictures, never processes: `training/style_trainer.py`), in diffusers format.
"""

from __future__ import annotations

import json

from pm_lightning.core import validate as v


def main(argv: list[str] | None = None) -> None:
    from pm_lightning.data.synthetic_corpus import DOMAINS

    p = v.Parser(prog="python -m pm_lightning.style_lora", description=__doc__.split("\n")[0])
    p.add_argument(
        "--domain", required=True, choices=sorted(DOMAINS), help="synthetic domain whose pictures define the style"
    )
    p.add_argument("--out", type=v.output_file, required=True, help="output FILE.safetensors (diffusers LoRA)")
    p.add_argument("--base", default="tiny", help="Flux variant, diffusers directory or hub id")
    p.add_argument("--steps", type=v.POSITIVE_INT, default=None, help="training steps (default StyleLoraConfig's)")
    p.add_argument("--rank", type=v.Rule(int, 1, 1024), default=None, help="LoRA rank (default StyleLoraConfig's)")
    p.add_argument("--lr", type=v.POSITIVE, default=None, help="learning rate (default StyleLoraConfig's)")
    p.add_argument(
        "--batch-size", type=v.POSITIVE_INT, default=None, help="pictures per step (default StyleLoraConfig's)"
    )
    p.add_argument("--resolution", type=v.SIDE, default=None, help="picture side (default: the base's grid resolution)")
    p.add_argument("--seed", type=v.SEED, default=0)
    args = p.parse_args(argv)
    from pm_lightning.models.backbone import FluxBackbone
    from pm_lightning.models.variants import VARIANTS
    from pm_lightning.training.style_trainer import StyleLoraConfig, train_style_lora

    variant = VARIANTS.get(args.base)
    resolution = args.resolution or (variant.resolution if variant is not None else 1024)
    given = {k: getattr(args, k) for k in ("steps", "rank", "lr", "batch_size") if getattr(args, k) is not None}
    cfg = StyleLoraConfig(args.domain, resolution=resolution, seed=args.seed, **given)
    result = train_style_lora(FluxBackbone.from_pretrained(args.base), cfg, args.out)
    print(json.dumps({"out": str(args.out), **result}))


if __name__ == "__main__":
    main()
