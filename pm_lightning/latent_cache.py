"""Encode every grid of a shard set once with the base's VAE: `python -m pm_lightning.latent_cache`.

    python -m pm_lightning.latent_cache --config experiments/fabric_toys.yaml --base flux-dev --out data/cache/latents/flux-dev
    python -m pm_lightning.latent_cache --shards data/shards/train data/shards/val --resolution 192 --base tiny \
        --out runs/latent-cache

Writes `<out>/<cache id>/<grid id>.safetensors` (`models/vae_latents.py`), the folder a stage-1 run reads with
`model.init_args.latent_cache_dir: <out>`: the run then never encodes a grid and keeps the VAE off the GPU for its
training steps. `--resolution` is the run's `data.resolution` (read from `--config`); `--dtype` the run's base dtype
(bfloat16 under bf16-mixed, float32 for the tiny CPU runs). Both are part of the cache id, like the VAE itself, so
a run with another base, resolution or dtype is refused. Grids already cached are skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pm_lightning.core import validate as v
from pm_lightning.core.config_files import config_shards, load_config
from pm_lightning.core.dtypes import dtype_name
from pm_lightning.core.errors import BadInput
from pm_lightning.core.progress import add_progress_flag, apply_progress_flag
from pm_lightning.inference.flags import add_device_flags


def config_data(path: Path) -> tuple[list[str], int | None]:
    """An experiment config's training + validation shard specs and its `data.resolution`."""
    data = load_config(path).get("data") or {}
    return config_shards(path), data.get("resolution")


def main(argv: list[str] | None = None) -> int:
    p = v.Parser(prog="python -m pm_lightning.latent_cache", description=__doc__.split("\n")[0])
    p.add_argument("--shards", nargs="+", default=[], help="shard directories, files or patterns")
    p.add_argument(
        "--config", type=v.existing_file, default=None, help="experiment config: its shards and data.resolution"
    )
    p.add_argument("--resolution", type=v.SIDE, default=None, help="grid side in px (default: the config's)")
    p.add_argument("--base", default="tiny", help="Flux variant, diffusers directory or hub id (as the run's)")
    p.add_argument("--out", type=v.output_dir, required=True, help="the cache folder (the run's latent_cache_dir)")
    add_device_flags(p, "the base's training dtype: float32 for tiny, else bfloat16")
    p.add_argument("--batch-size", type=v.POSITIVE_INT, default=8, help="grids per VAE call")
    add_progress_flag(p)
    args = p.parse_args(argv)
    apply_progress_flag(args)
    # after parsing: torch and the VAE's stack, 3.7 s that --help and a bad flag skip (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.data.stream import ResolutionError
    from pm_lightning.inference.runtime import Runtime
    from pm_lightning.models.backbone import load_vae
    from pm_lightning.models.vae_latents import LatentCache, precompute

    shards, resolution = list(args.shards), args.resolution
    if args.config:
        from_config, config_resolution = config_data(args.config)
        shards += from_config
        resolution = resolution or config_resolution
    if not shards:
        p.error("give --shards or --config")
    if not resolution:
        p.error("give --resolution (the run's data.resolution) or a --config that sets it")
    try:
        rt = Runtime.for_cache(args.device, args.dtype, args.base)
        vae = load_vae(args.base, rt.dtype).to(rt.device).eval()
        cache = LatentCache(args.out, vae, rt.dtype, args.base)
        written, before = precompute(cache, vae, shards, resolution, args.batch_size)
    except (BadInput, FileNotFoundError, ResolutionError) as err:
        raise SystemExit(f"error: {err}") from None
    print(
        f"{written} grids encoded at {resolution} px ({before} were already cached) -> {cache.folder(resolution)} "
        f"(latent_cache_dir: {args.out}, dtype {dtype_name(rt.dtype)}, VAE sha256 {cache.fingerprint[:12]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
