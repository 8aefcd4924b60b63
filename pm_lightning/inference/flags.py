"""Command-line flags shared by `python -m pm_lightning.generate` and `python -m pm_lightning.adapt`."""

from __future__ import annotations

import argparse
from pathlib import Path


def common_flags(p: argparse.ArgumentParser) -> None:
    """The backbone, stage-2 LoRA, sampler, evaluator and adaptive-steps flags."""
    from pm_lightning.inference.adaptive import add_config_flags
    from pm_lightning.inference.cache import add_cache_flags

    p.add_argument("--base", default="tiny", help="Flux variant (tiny, flux-dev, ...), diffusers directory or hub id")
    p.add_argument("--stage2", type=Path, default=None, help="stage-2 (dual reference) LoRA file")
    p.add_argument(
        "--stage2-fuse",
        type=Path,
        default=None,
        help="stage-1 LoRA the stage-2 LoRA was trained on (fused first; tiny default from experiments/tiny_stage2.yaml)",
    )
    p.add_argument("--steps", nargs="+", default=None, help="one step text per frame (captions; Delta_sem)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-inference-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument(
        "--cell", type=int, default=None, help="stage-2 frame size in px (default: the frames' size, whole 16 px)"
    )
    p.add_argument("--clip", default="tiny", help="CLIP for the adaptive steps (Encoders.load spec)")
    p.add_argument("--dino", default="tiny", help="DINO for the adaptive steps (Encoders.load spec)")
    p.add_argument(
        "--insert-batch", type=int, default=8, help="stage-2 insertions sampled together per call (memory cap)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_cache_flags(p)
    add_config_flags(p)
