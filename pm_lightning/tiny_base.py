"""Build and pretrain the embedded tiny Flux base: `python -m pm_lightning.tiny_base --out data/tiny-flux`.

The recipe: `pm_lightning/tiny/flux_builder.py`; the result is documented in docs/TINY_FLUX.md.
"""

from __future__ import annotations

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
    from pm_lightning.tiny.flux_builder import build

    given = {k: getattr(args, k) for k in ("vae_steps", "steps") if getattr(args, k) is not None}
    cfg = pretrain.PretrainConfig(seed=args.seed, **given)
    if args.quick:
        cfg.pools, cfg.batches, cfg.val_per_domain = {64: 2, 128: 1}, {64: 4, 128: 2}, 1
        cfg.size_cycle, cfg.warmup, cfg.vae_batch = (64, 128), 1, 4
    samples = None if str(args.samples) == "none" else args.samples
    command = "python -m pm_lightning.tiny_base " + " ".join(argv if argv is not None else sys.argv[1:])
    log = build(args.out, cfg, components.TinyFluxConfig(), args.threads, samples, command.strip())
    print(json.dumps({k: log[k] for k in ("validation", "size_mb", "total_seconds")}, indent=1))


if __name__ == "__main__":
    main()
