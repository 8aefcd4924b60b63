"""`python -m pm_lightning.export`: a training checkpoint's LoRA files (diffusers or kohya format) with a model card.

    python -m pm_lightning.export --ckpt runs/x/checkpoints/last.ckpt --domain lego --out lego.safetensors
    python -m pm_lightning.export --ckpt last.ckpt --domain all --out hub/ --format kohya --dtype bf16
    python -m pm_lightning.export --ckpt last.ckpt --domain all --out hub/ --push-to-hub me/pm-lego

`--out` is a file (one domain; its card is `<stem>.README.md` beside it) or a folder (`<domain>.safetensors`, kohya:
`<domain>.kohya.safetensors`, a `README.md` model card and the run's sample grid, ready to push). An export never
replaces a file it did not write itself, and a push sends only the files exports wrote there (the LoRA files,
their card, its picture: `models/export_files.py`). The checkpoint is read with `weights_only=True` (tensors and
plain data, never arbitrary pickled objects). Formats: `models/lora_files.py` (diffusers), `models/kohya.py`
(ComfyUI, Forge, kohya tools).
"""

from __future__ import annotations

import argparse

from pm_lightning.core import validate as v
from pm_lightning.core.dtypes import DTYPE_NAMES, torch_dtype

PROG = "python -m pm_lightning.export"
FORMATS = ("diffusers", "kohya")  # models/lora_files.py's, light (tests/test_validate.py checks they agree)


def hub_repo(text: str) -> str:
    """argparse `type=`: a Hub repo id (`user/name`), checked by huggingface_hub's own rule."""
    # inside: huggingface_hub's import is paid only when --push-to-hub is given
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as err:
        raise argparse.ArgumentTypeError(str(err).splitlines()[0]) from None
    if text.count("/") != 1:
        raise argparse.ArgumentTypeError(f"give the repo as user/name (or org/name), got {text!r}")
    return text


def export_out(text: str):
    """argparse `type=`: `--out` is a `*.safetensors` file (one domain) or else a folder."""
    return v.output_file(text) if text.endswith(".safetensors") else v.output_dir(text)


def main(argv: list[str] | None = None) -> None:
    p = v.Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", type=v.existing_file, required=True, help="Lightning checkpoint of a training run")
    p.add_argument(
        "--domain", nargs="+", required=True, help="domain names from the checkpoint's list, 'unseen', or 'all'"
    )
    p.add_argument("--out", type=export_out, required=True, help="output FILE.safetensors (one domain) or folder")
    p.add_argument("--format", default="diffusers", choices=FORMATS, help="diffusers, or kohya (lora_unet_... keys)")
    p.add_argument("--base", default=None, help="override hyper_parameters['base'] (variant, directory or hub id)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPE_NAMES), help="dtype of the written tensors")
    p.add_argument(
        "--push-to-hub", type=hub_repo, default=None, metavar="REPO", help="upload the folder to this Hub model repo"
    )
    p.add_argument("--public", action="store_true", help="create the Hub repo public (default: private)")
    args = p.parse_args(argv)
    if args.out.suffix == ".safetensors" and args.push_to_hub:
        p.error("argument --push-to-hub: pushes a folder export: give a folder as --out (its card is README.md)")
    # after parsing: torch, diffusers and the hub client, which --help and a bad flag skip (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.models.publish import PushFailed, export_checkpoint, push_folder

    try:
        plan, files = export_checkpoint(
            args.ckpt, args.domain, args.out, args.format, torch_dtype(args.dtype), args.base
        )
    except ValueError as err:
        v.refuse(PROG, err)
    for domain, name in files.items():
        print(f"wrote {plan.folder / name} ({args.format}, {args.dtype}, domain {domain!r})")
    print(f"wrote {plan.folder / plan.card} (model card)")
    if args.push_to_hub:
        try:
            print(f"pushed to {push_folder(plan.folder, args.push_to_hub, private=not args.public)}")
        except PushFailed as err:
            v.refuse(PROG, err, code=1)


if __name__ == "__main__":
    main()
