"""Precompute the text embeddings of a shard set and its sample prompts once: `python -m pm_lightning.text_cache`.

    python -m pm_lightning.text_cache --config experiments/fabric_toys.yaml --base flux-dev --out data/cache/text/flux-dev
    python -m pm_lightning.text_cache --shards data/shards/train data/shards/val --prompts experiments/tiny.yaml \
        --base tiny --out runs/text-cache
    python -m pm_lightning.text_cache --config experiments/fabric_toys_stage2.yaml --step-text --base flux-dev --out ...

Writes the text embedding cache (`<out>/<encoder id>/<sha256(caption)>.safetensors`, `TextEmbeddingCache`), the folder a run reads with
`model.init_args.text_cache_dir: <out>`; with `text_cache_only: true` the run never loads T5-XXL / CLIP (about
9.5 GiB per GPU at FLUX.1-dev size). `--dtype` must be the run's base dtype (bfloat16 under bf16-mixed, float32 for
the tiny CPU runs): it is part of the cache key. Captions already cached are skipped. Formats:
`models/text_embeddings.py`.
"""

from __future__ import annotations

import sys

from pm_lightning.core import validate as v
from pm_lightning.core.config_files import config_prompts, config_shards
from pm_lightning.core.dtypes import dtype_name
from pm_lightning.core.errors import BadInput
from pm_lightning.core.progress import add_progress_flag, apply_progress_flag
from pm_lightning.inference.flags import add_device_flags


def main(argv: list[str] | None = None) -> int:
    p = v.Parser(prog="python -m pm_lightning.text_cache", description=__doc__.split("\n")[0])
    p.add_argument("--shards", nargs="+", default=[], help="shard directories, files or patterns")
    p.add_argument(
        "--config", type=v.existing_file, default=None, help="experiment config: its shards and sample prompts"
    )
    p.add_argument("--prompts", type=v.existing_file, default=None, help="sample prompts: a config YAML or a text file")
    p.add_argument("--base", default="tiny", help="Flux variant, diffusers directory or hub id (as the run's)")
    p.add_argument("--out", type=v.output_dir, required=True, help="the cache folder (the run's text_cache_dir)")
    add_device_flags(p, "the base's training dtype: float32 for tiny, else bfloat16")
    p.add_argument(
        "--max-sequence-length", type=v.Rule(int, 1, 4096), default=None, help="T5 tokens (default: the variant's)"
    )
    p.add_argument("--step-text", action="store_true", help="stage 2 with step_text: caption + step pairs too")
    p.add_argument("--batch-size", type=v.POSITIVE_INT, default=16, help="captions per text-encoder call")
    add_progress_flag(p)
    args = p.parse_args(argv)
    apply_progress_flag(args)
    # after parsing: torch and the text encoders' stack, 3.6 s that --help and a bad flag skip (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.inference.runtime import Runtime
    from pm_lightning.models.backbone import FluxBackbone
    from pm_lightning.models.text_embeddings import precompute, shard_captions

    shards = list(args.shards) + (config_shards(args.config) if args.config else [])
    prompt_files = [f for f in (args.config, args.prompts) if f is not None]
    if not shards and not prompt_files:
        p.error("give --shards, --config or --prompts")
    try:
        rt = Runtime.for_cache(args.device, args.dtype, args.base)
        captions = shard_captions(shards, args.step_text) if shards else []
    except (BadInput, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    prompts = sorted({c for f in prompt_files for c in config_prompts(f)})
    backbone = FluxBackbone.from_pretrained(  # the text encoders only: no transformer, no VAE
        args.base, rt.dtype, text_cache_dir=args.out, max_sequence_length=args.max_sequence_length, image_models=False
    )
    backbone.to(rt.device)
    written, cached = precompute(backbone, sorted(set(captions) | set(prompts)), args.batch_size)
    print(
        f"{len(captions)} shard captions + {len(prompts)} sample prompts: {written} encoded, {cached} already cached "
        f"-> {backbone.text_cache.folder} (text_cache_dir: {args.out}, dtype {dtype_name(rt.dtype)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
