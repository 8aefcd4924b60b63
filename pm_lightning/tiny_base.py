"""Build and pretrain the embedded tiny Flux base: `python -m pm_lightning.tiny_base --out data/tiny-flux`.

The recipe: `pm_lightning/tiny/flux_builder.py`; the result is documented in docs/TINY_FLUX.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pm_lightning.core import validate as v


def main(argv: list[str] | None = None) -> None:
    p = v.Parser(prog="python -m pm_lightning.tiny_base", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=v.output_dir, default=Path("data/tiny-flux"), help="the diffusers folder written")
    p.add_argument("--seed", type=v.SEED, default=0, help="initialisation and data seed")
    p.add_argument("--threads", type=v.WORKERS, default=2, help="torch CPU threads")
    p.add_argument("--vae-steps", type=v.NON_NEGATIVE_INT, default=None, help="VAE steps (default PretrainConfig's)")
    p.add_argument("--steps", type=v.POSITIVE_INT, default=None, help="transformer steps (default PretrainConfig's)")
    p.add_argument("--vae-only", action="store_true", help="train only the VAE and save it (an AutoencoderKL) to --out")
    p.add_argument("--latent-channels", type=v.POSITIVE_INT, default=16, help="VAE latent channels (transformer: 4x)")
    p.add_argument("--vae-channels", type=_widths, default=None, help="VAE block widths: 4 (8x) or 3 (4x)")
    p.add_argument("--vae-layers", type=v.POSITIVE_INT, default=1, help="ResNet layers per VAE block")
    p.add_argument("--quick", action="store_true", help="tiny pools and a few steps (smoke test of the recipe)")
    p.add_argument(
        "--samples",
        type=lambda text: text if text == "none" else v.output_file(text),
        default=Path("docs/tiny-flux-samples.png"),
        help="where to draw the sample sheet; 'none' to skip",
    )
    args = p.parse_args(argv)
    # after parsing: the recipe imports torch, diffusers and transformers, 15.6 s (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.tiny import flux_components as components
    from pm_lightning.tiny import flux_pretrain as pretrain
    from pm_lightning.tiny.flux_builder import build, build_vae

    given = {k: getattr(args, k) for k in ("vae_steps", "steps") if getattr(args, k) is not None}
    cfg = pretrain.PretrainConfig(seed=args.seed, **given)
    if args.quick:
        cfg.pools, cfg.batches, cfg.val_per_domain = {64: 2, 128: 1}, {64: 4, 128: 2}, 1
        cfg.size_cycle, cfg.warmup, cfg.vae_batch = (64, 128), 1, 4
    model_cfg = components.with_latents(args.latent_channels, args.vae_channels, args.vae_layers)
    command = "python -m pm_lightning.tiny_base " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.vae_only:
        log = build_vae(args.out, cfg, model_cfg, args.threads, command.strip())
        print(json.dumps({k: log["vae"][k] for k in ("vae_seconds", "val_l1", "params")}, indent=1))
        return
    samples = None if str(args.samples) == "none" else args.samples
    log = build(args.out, cfg, model_cfg, args.threads, samples, command.strip())
    print(json.dumps({k: log[k] for k in ("validation", "size_mb", "total_seconds")}, indent=1))


def _widths(text: str) -> tuple[int, ...]:
    """'16,32,64,64' -> (16, 32, 64, 64): four (8x) or three (4x) positive block widths."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if len(widths) not in (3, 4) or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"must be 4 (8x) or 3 (4x downsampling) positive widths, got {text!r}")
    return widths


if __name__ == "__main__":
    main()
