"""`python -m pm_lightning.export`: one domain's LoRA from a training checkpoint, in diffusers format.

    python -m pm_lightning.export --ckpt runs/x/checkpoints/last.ckpt --domain lego --out lego.safetensors
    python -m pm_lightning.export --ckpt last.ckpt --domain unseen --out generic.safetensors

File format and checkpoint contract: `pm_lightning/models/lora_files.py`.
"""

from __future__ import annotations

import argparse

from pm_lightning.models.lora_files import domain_index_of, export_domain_lora, load_checkpoint_adapters
from pm_lightning.training.precision import DTYPES


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pm_lightning.export", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint of a stage-1 run")
    p.add_argument("--domain", required=True, help="domain name from the checkpoint's list, or 'unseen'")
    p.add_argument("--out", required=True, help="output FILE.safetensors")
    p.add_argument("--base", default=None, help="override hyper_parameters['base'] (variant, directory or hub id)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of the written tensors")
    args = p.parse_args(argv)
    try:
        transformer, cfg, domains = load_checkpoint_adapters(args.ckpt, args.base)
        index = domain_index_of(args.domain, domains)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    path = export_domain_lora(transformer, index, args.out, DTYPES[args.dtype])
    print(f"wrote {path} ({cfg.kind} adapter, domain {args.domain!r}, rank {cfg.rank})")


if __name__ == "__main__":
    main()
