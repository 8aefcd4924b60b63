"""Train a style LoRA on single pictures: `python -m pm_lightning.style_lora --images DIR` (or `--domain NAME`).

    python -m pm_lightning.style_lora --images my_origami/ --out runs/style/origami.safetensors
    python -m pm_lightning.style_lora --domain origami --out runs/style/origami.safetensors
    python -m pm_lightning.generate --prompt "an origami crane" --domain origami \\
        --extra-lora runs/style/origami.safetensors:0.8 --out outputs/origami

MakeAnything's route to an unseen domain: its procedural LoRA with a community style LoRA stacked on top. This
trains such a style LoRA here (pictures, never processes: `training/style_trainer.py`), in diffusers format, on a
folder of your pictures with same-name .txt captions (`a.png` + `a.txt`, the kohya convention; any size: each is
cropped to its centre square, `data/image_folder.py`) or on synthetic pictures of a corpus domain.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pm_lightning.core.errors import BadInput
from pm_lightning.data.image_folder import folder_domain, picture_set
from pm_lightning.data.synthetic_corpus import spec_for
from pm_lightning.models.backbone import FluxBackbone
from pm_lightning.models.variants import VARIANTS
from pm_lightning.training.style_trainer import StyleLoraConfig, train_style_lora


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pm_lightning.style_lora", description=__doc__.split("\n")[0])
    p.add_argument(
        "--images", type=Path, default=None, metavar="DIR", help="your pictures, each with a same-name .txt caption"
    )
    p.add_argument(
        "--domain",
        default=None,
        help="without --images: the synthetic domain whose pictures define the style; with --images: the style's "
        "name (default: the folder's name, without kohya's '10_' repeat prefix)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output FILE.safetensors (default runs/style/<domain>.safetensors)"
    )
    p.add_argument("--strict", action="store_true", help="--images: a skipped picture is an error")
    p.add_argument("--base", default="tiny", help="Flux variant, diffusers directory or hub id")
    p.add_argument("--steps", type=int, default=StyleLoraConfig.steps)
    p.add_argument("--rank", type=int, default=StyleLoraConfig.rank)
    p.add_argument("--lr", type=float, default=StyleLoraConfig.lr)
    p.add_argument("--batch-size", type=int, default=StyleLoraConfig.batch_size)
    p.add_argument("--resolution", type=int, default=None, help="picture side (default: the base's grid resolution)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.images is None and args.domain is None:
        p.error("give --images DIR (your pictures) or --domain NAME (a synthetic corpus domain)")

    variant = VARIANTS.get(args.base)
    resolution = args.resolution or (variant.resolution if variant is not None else 1024)
    pictures, skipped = None, 0
    try:
        if args.images is not None:
            pictures, skipped = picture_set(args.images, resolution, args.strict)
        else:
            spec_for(args.domain)
    except (BadInput, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    domain = folder_domain(args.images, args.domain) if args.images is not None else args.domain
    out = args.out or Path("runs/style") / f"{domain}.safetensors"
    cfg = StyleLoraConfig(
        domain, args.steps, args.rank, args.lr, args.batch_size, resolution=resolution, seed=args.seed
    )
    result = train_style_lora(FluxBackbone.from_pretrained(args.base), cfg, out, pictures=pictures)
    counts = {"pictures": len(pictures), "skipped": skipped} if pictures is not None else {}
    print(json.dumps({"out": str(out), "domain": domain, **counts, **result}))


if __name__ == "__main__":
    main()
