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

import json
from pathlib import Path

from pm_lightning.core import validate as v
from pm_lightning.core.errors import BadInput
from pm_lightning.core.progress import add_progress_flag, apply_progress_flag
from pm_lightning.models.variants import VARIANTS


def main(argv: list[str] | None = None) -> None:
    # inside: the corpus table brings PIL, which style_lora does not load before parsing (as on main)
    from pm_lightning.data.synthetic_corpus import DOMAINS

    p = v.Parser(prog="python -m pm_lightning.style_lora", description=__doc__.split("\n")[0])
    p.add_argument(
        "--images",
        type=v.existing_dir,
        default=None,
        metavar="DIR",
        help="your pictures, each with a same-name .txt caption",
    )
    p.add_argument(
        "--domain",
        default=None,
        help="without --images: the synthetic domain whose pictures define the style "
        f"({', '.join(sorted(DOMAINS))}); with --images: the style's name (default: the folder's name, without "
        "kohya's '10_' repeat prefix)",
    )
    p.add_argument(
        "--out",
        type=v.output_file,
        default=None,
        help="output FILE.safetensors (default runs/style/<domain>.safetensors)",
    )
    p.add_argument("--strict", action="store_true", help="--images: a skipped picture is an error")
    p.add_argument("--base", default="tiny", help="Flux variant, diffusers directory or hub id")
    p.add_argument("--steps", type=v.POSITIVE_INT, default=None, help="training steps (default StyleLoraConfig's)")
    p.add_argument("--rank", type=v.Rule(int, 1, 1024), default=None, help="LoRA rank (default StyleLoraConfig's)")
    p.add_argument("--lr", type=v.POSITIVE, default=None, help="learning rate (default StyleLoraConfig's)")
    p.add_argument(
        "--batch-size", type=v.POSITIVE_INT, default=None, help="pictures per step (default StyleLoraConfig's)"
    )
    p.add_argument("--resolution", type=v.SIDE, default=None, help="picture side (default: the base's grid resolution)")
    p.add_argument("--seed", type=v.SEED, default=0, help="noise, timestep and LoRA initialisation seed")
    add_progress_flag(p)
    args = p.parse_args(argv)
    apply_progress_flag(args)
    if args.images is None and args.domain is None:
        p.error("give --images DIR (your pictures) or --domain NAME (a synthetic corpus domain)")
    if args.images is None and args.domain not in DOMAINS:
        p.error(
            f"argument --domain: {args.domain!r} is not a synthetic domain; give one of {', '.join(sorted(DOMAINS))}"
        )
    # after parsing: torch, diffusers and the trainer, which --help and a bad flag skip (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.data.image_folder import folder_domain, picture_set
    from pm_lightning.models.backbone import FluxBackbone
    from pm_lightning.training.style_trainer import StyleLoraConfig, train_style_lora

    variant = VARIANTS.get(args.base)
    resolution = args.resolution or (variant.resolution if variant is not None else 1024)
    pictures, skipped = None, 0
    if args.images is not None:
        try:
            pictures, skipped = picture_set(args.images, resolution, args.strict)
        except (BadInput, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
    domain = folder_domain(args.images, args.domain) if args.images is not None else args.domain
    out = args.out or Path("runs/style") / f"{domain}.safetensors"
    given = {k: getattr(args, k) for k in ("steps", "rank", "lr", "batch_size") if getattr(args, k) is not None}
    cfg = StyleLoraConfig(domain, resolution=resolution, seed=args.seed, **given)
    result = train_style_lora(FluxBackbone.from_pretrained(args.base), cfg, out, pictures=pictures)
    counts = {"pictures": len(pictures), "skipped": skipped} if pictures is not None else {}
    print(json.dumps({"out": str(out), "domain": domain, **counts, **result}))


if __name__ == "__main__":
    main()
