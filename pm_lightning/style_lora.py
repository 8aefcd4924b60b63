"""Train a style LoRA on single pictures of one domain: `python -m pm_lightning.style_lora --domain origami --out F`.

    python -m pm_lightning.style_lora --domain origami --out runs/style/origami.safetensors
    python -m pm_lightning.generate --prompt "an origami crane" --domain origami \\
        --extra-lora runs/style/origami.safetensors:0.8 --out outputs/origami

MakeAnything's route to an unseen domain: its procedural LoRA with a community style LoRA stacked on top. This
trains such a style LoRA here (pictures, never processes: `training/style_trainer.py`), in diffusers format.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pm_lightning.data.synthetic_corpus import spec_for
from pm_lightning.models.backbone import FluxBackbone
from pm_lightning.models.variants import VARIANTS
from pm_lightning.training.style_trainer import StyleLoraConfig, train_style_lora


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pm_lightning.style_lora", description=__doc__.split("\n")[0])
    p.add_argument("--domain", required=True, help="synthetic domain whose pictures define the style")
    p.add_argument("--out", type=Path, required=True, help="output FILE.safetensors (diffusers LoRA)")
    p.add_argument("--base", default="tiny", help="Flux variant, diffusers directory or hub id")
    p.add_argument("--steps", type=int, default=StyleLoraConfig.steps)
    p.add_argument("--rank", type=int, default=StyleLoraConfig.rank)
    p.add_argument("--lr", type=float, default=StyleLoraConfig.lr)
    p.add_argument("--batch-size", type=int, default=StyleLoraConfig.batch_size)
    p.add_argument("--resolution", type=int, default=None, help="picture side (default: the base's grid resolution)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    try:
        spec_for(args.domain)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    variant = VARIANTS.get(args.base)
    resolution = args.resolution or (variant.resolution if variant is not None else 1024)
    cfg = StyleLoraConfig(
        args.domain, args.steps, args.rank, args.lr, args.batch_size, resolution=resolution, seed=args.seed
    )
    result = train_style_lora(FluxBackbone.from_pretrained(args.base), cfg, args.out)
    print(json.dumps({"out": str(args.out), **result}))


if __name__ == "__main__":
    main()
