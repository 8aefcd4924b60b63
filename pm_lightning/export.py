"""`python -m pm_lightning.export`: a training checkpoint's LoRA files (diffusers or kohya format) with a model card.

    python -m pm_lightning.export --ckpt runs/x/checkpoints/last.ckpt --domain lego --out lego.safetensors
    python -m pm_lightning.export --ckpt last.ckpt --domain all --out hub/ --format kohya --dtype bf16
    python -m pm_lightning.export --ckpt last.ckpt --domain all --out hub/ --push-to-hub me/pm-lego

`--out` is a file (one domain) or a folder (`<domain>.safetensors`, kohya: `<domain>.kohya.safetensors`); the folder
gets a `README.md` model card and the run's sample grid, ready to push. The checkpoint is read with
`weights_only=True` (tensors and plain data, never arbitrary pickled objects). Formats: `models/lora_files.py`
(diffusers), `models/kohya.py` (ComfyUI, Forge, kohya tools).
"""

from __future__ import annotations

import argparse

from pm_lightning.core.dtypes import DTYPES
from pm_lightning.models.lora_files import FORMATS
from pm_lightning.models.publish import PushFailed, export_checkpoint, push_folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pm_lightning.export", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint of a training run")
    p.add_argument(
        "--domain", nargs="+", required=True, help="domain names from the checkpoint's list, 'unseen', or 'all'"
    )
    p.add_argument("--out", required=True, help="output FILE.safetensors (one domain) or folder")
    p.add_argument("--format", default="diffusers", choices=FORMATS, help="diffusers, or kohya (lora_unet_... keys)")
    p.add_argument("--base", default=None, help="override hyper_parameters['base'] (variant, directory or hub id)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of the written tensors")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the folder to this Hub model repo")
    p.add_argument("--public", action="store_true", help="create the Hub repo public (default: private)")
    args = p.parse_args(argv)
    try:
        folder, files = export_checkpoint(args.ckpt, args.domain, args.out, args.format, DTYPES[args.dtype], args.base)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    for domain, name in files.items():
        print(f"wrote {folder / name} ({args.format}, {args.dtype}, domain {domain!r})")
    print(f"wrote {folder / 'README.md'} (model card)")
    if args.push_to_hub:
        try:
            print(f"pushed to {push_folder(folder, args.push_to_hub, private=not args.public)}")
        except PushFailed as err:
            raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
