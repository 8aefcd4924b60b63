"""Command-line flags shared by `python -m pm_lightning.generate` and `python -m pm_lightning.adapt`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pm_lightning.inference.adaptive_settings import add_config_flags
from pm_lightning.inference.cache import add_cache_flags
from pm_lightning.inference.runtime import add_runtime_flags, fill_sampler_defaults
from pm_lightning.inference.session import extra_lora


def common_flags(p: argparse.ArgumentParser) -> None:
    """The backbone, stage-2 LoRA, sampler, evaluator and adaptive-steps flags."""
    p.add_argument("--base", default="tiny", help="Flux variant (tiny, flux-dev, ...), diffusers directory or hub id")
    p.add_argument("--stage2", type=Path, default=None, help="stage-2 (dual reference) LoRA file")
    p.add_argument(
        "--stage2-fuse",
        type=Path,
        default=None,
        help="stage-1 LoRA the stage-2 LoRA was trained on (fused first; default: the one the stage-2 file records, "
        "else for tiny experiments/tiny_stage2.yaml's)",
    )
    p.add_argument("--steps", nargs="+", default=None, help="one step text per frame (captions; Delta_sem)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--num-inference-steps", type=int, default=None, help="sampler steps (default: the variant's; FLUX.1-dev 28)"
    )
    p.add_argument("--guidance", type=float, default=None, help="guidance (default: the variant's; FLUX.1-dev 3.5)")
    p.add_argument(
        "--cell", type=int, default=None, help="stage-2 frame size in px (default: the frames' size, whole 16 px)"
    )
    p.add_argument("--clip", default="tiny", help="CLIP for the adaptive steps (Encoders.load spec)")
    p.add_argument("--dino", default="tiny", help="DINO for the adaptive steps (Encoders.load spec)")
    p.add_argument(
        "--insert-batch", type=int, default=8, help="stage-2 insertions sampled together per call (memory cap)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_runtime_flags(p)
    add_cache_flags(p)
    add_config_flags(p)


def parse_inference_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`p.parse_args(argv)` with the sampler defaults of the base variant filled in (generate, adapt, the demo)."""
    return fill_sampler_defaults(p.parse_args(argv))


def generate_parser(prog: str = "python -m pm_lightning.generate", description: str = "") -> argparse.ArgumentParser:
    """`generate`'s flags (the web demo builds its requests from them too, so both share every default)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--prompt", required=True)
    p.add_argument("--domain", default=None, help="training domain name (its stage-1 LoRA); unknown/none -> unseen")
    p.add_argument("--stage1", type=Path, default=None, help="exported stage-1 LoRA file (diffusers format)")
    p.add_argument(
        "--extra-lora",
        type=extra_lora,
        action="append",
        default=[],
        metavar="FILE[:WEIGHT]",
        help="stack a style LoRA on the stage-1 LoRA (repeatable; weight default 1)",
    )
    p.add_argument("--adaptive", action="store_true", help="run the sliding-window adaptive steps")
    p.add_argument("--image", type=Path, default=None, help="ReCraft: the finished image -> the steps before it")
    p.add_argument("--recraft", type=Path, default=None, help="ReCraft LoRA file (tiny default: make train-recraft's)")
    p.add_argument(
        "--recraft-fuse",
        type=Path,
        default=None,
        help="stage-1 LoRA the ReCraft LoRA was trained on (default: the one the ReCraft file records)",
    )
    p.add_argument(
        "--frames",
        type=int,
        choices=(4, 9),
        default=None,
        help="frames of the grid (default: the synthetic domain's count, else 9)",
    )
    p.add_argument("--resolution", type=int, default=None, help="grid side in px (default: tiny 192, else 1024 / 1056)")
    common_flags(p)
    return p
