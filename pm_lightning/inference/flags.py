"""Command-line flags shared by `python -m pm_lightning.generate`, `adapt` and `evaluate`; their defaults are
`GenerationRequest`'s (inference/request.py), which the web demo and the ablation build directly.

Light on purpose (no torch): every flag is checked by its rule (`core/validate.py`) while parsing, so a bad value
is refused in about a second, before the models are imported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pm_lightning.core import validate as v
from pm_lightning.core.dtypes import DTYPE_NAMES
from pm_lightning.core.progress import add_progress_flag
from pm_lightning.inference.adaptive_settings import add_config_flags
from pm_lightning.inference.cache import add_cache_flags
from pm_lightning.inference.request import FRAME_COUNTS
from pm_lightning.inference.request import GenerationRequest as Request


def add_device_flags(p: argparse.ArgumentParser, dtype_default: str = "bfloat16 on a GPU, float32 on CPU") -> None:
    """--device and --dtype (every inference command, the cache commands)."""
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPE_NAMES), help=f"dtype (default: {dtype_default})")


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """--device, --dtype, --vae-tiling, --cpu-offload (the commands that run the Flux pipeline)."""
    add_device_flags(p)
    p.add_argument("--vae-tiling", action="store_true", help="decode the grid tile by tile (less VAE memory)")
    p.add_argument(
        "--cpu-offload", action="store_true", help="keep each model on the CPU until it runs (cards < 40 GB)"
    )


def common_flags(p: argparse.ArgumentParser) -> None:
    """The backbone, stage-2 LoRA, sampler, evaluator and adaptive-steps flags; --no-progress."""
    add_progress_flag(p)
    p.add_argument(
        "--base", default=Request.base, help="Flux variant (tiny, flux-dev, ...), diffusers directory or hub id"
    )
    p.add_argument("--stage2", type=v.existing_file, default=None, help="stage-2 (dual reference) LoRA file")
    p.add_argument(
        "--stage2-fuse",
        type=v.existing_file,
        default=None,
        help="stage-1 LoRA the stage-2 LoRA was trained on (fused first; default: the one the stage-2 file records "
        "when it lies beside it or under runs/ with the recorded sha256, else for tiny experiments/tiny_stage2.yaml's)",
    )
    p.add_argument("--steps", nargs="+", default=None, help="one step text per frame (captions; Delta_sem)")
    p.add_argument("--seed", type=v.SEED, default=Request.seed, help=f"seed ({v.SEED.describe()})")
    p.add_argument(
        "--num-inference-steps",
        type=v.SAMPLER_STEPS,
        default=None,
        help="sampler steps (default: the variant's; FLUX.1-dev 28)",
    )
    p.add_argument(
        "--guidance", type=v.GUIDANCE, default=None, help="guidance (default: the variant's; FLUX.1-dev 3.5)"
    )
    p.add_argument(
        "--cell", type=v.SIDE, default=None, help="stage-2 frame size in px (default: the frames' size, whole 16 px)"
    )
    p.add_argument("--clip", default=Request.clip, help="CLIP for the adaptive steps (Encoders.load spec)")
    p.add_argument("--dino", default=Request.dino, help="DINO for the adaptive steps (Encoders.load spec)")
    p.add_argument(
        "--insert-batch",
        type=v.POSITIVE_INT,
        default=Request.insert_batch,
        help="stage-2 insertions sampled together per call (memory cap)",
    )
    p.add_argument("--out", type=v.output_dir, required=True, help="output folder")
    add_runtime_flags(p)
    add_cache_flags(p)
    add_config_flags(p)


def split_error(resolution: int, frames: int) -> str | None:
    """Why a grid side does not split into `frames` cells of whole 16-px tokens (None when it does)."""
    # inside: data/grid.py brings numpy and PIL, which generate / adapt do not load before parsing (as on main)
    from pm_lightning.data.grid import layout_for

    rows, cols = layout_for(frames)
    step = v.TOKEN_PX * max(rows, cols)
    if resolution % step:
        return f"{resolution} does not split into {rows}x{cols} cells of whole 16-px tokens: give a multiple of {step}"
    return None


def extra_lora(text: str) -> tuple[Path, float]:
    """`FILE[:WEIGHT]` (argparse type of `--extra-lora`) -> (file, weight); the weight defaults to 1 (a colon followed
    by something that is no number is part of the name). The file must exist and the weight be finite (`F:nan`
    would draw a black grid)."""
    path, sep, weight = text.rpartition(":")
    try:
        number = float(weight) if sep and path else None
    except ValueError:
        number = None
    if number is None:
        return v.existing_file(text), 1.0
    if not v.FINITE.ok(number):
        raise argparse.ArgumentTypeError(f"the weight of {path} must be a finite number, got {weight!r}")
    return v.existing_file(path), number


def generate_parser(prog: str = "python -m pm_lightning.generate", description: str = "") -> argparse.ArgumentParser:
    """`generate`'s flags (their defaults: GenerationRequest's, which the web demo and the ablation build)."""
    p = v.Parser(prog=prog, description=description)
    p.add_argument("--prompt", required=True, help="what the sequence makes (the grid caption)")
    p.add_argument("--domain", default=None, help="training domain name (its stage-1 LoRA); unknown/none -> unseen")
    p.add_argument("--stage1", type=v.existing_file, default=None, help="exported stage-1 LoRA file (diffusers format)")
    p.add_argument(
        "--extra-lora",
        type=extra_lora,
        action="append",
        default=[],
        metavar="FILE[:WEIGHT]",
        help="stack a style LoRA on the stage-1 LoRA (repeatable; weight default 1, a finite number)",
    )
    p.add_argument("--adaptive", action="store_true", help="run the sliding-window adaptive steps")
    p.add_argument(
        "--image", type=v.existing_file, default=None, help="ReCraft: the finished image -> the steps before it"
    )
    p.add_argument(
        "--recraft", type=v.existing_file, default=None, help="ReCraft LoRA file (tiny default: make train-recraft's)"
    )
    p.add_argument(
        "--recraft-fuse",
        type=v.existing_file,
        default=None,
        help="stage-1 LoRA the ReCraft LoRA was trained on (default: the one the ReCraft file records, when trusted)",
    )
    p.add_argument(
        "--frames",
        type=int,
        choices=FRAME_COUNTS,
        default=None,
        help="frames of the grid (default: the synthetic domain's count, else 9)",
    )
    p.add_argument(
        "--resolution",
        type=v.SIDE,
        default=None,
        help=f"grid side in px, {v.SIDE.describe()} that splits into the grid's cells "
        "(default: tiny 192, else 1024 / 1056)",
    )
    common_flags(p)
    return p
