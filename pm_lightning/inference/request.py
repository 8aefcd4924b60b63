"""What one generation asks for: `GenerationRequest`, the typed request the inference session takes.

`generate` and `adapt` build it from their parsed flags (`request_from_args`); the web demo and the ablation build
it directly. Its field defaults are the flags' defaults (inference/flags.py reads them from here), so both ways give
the same request; the sampler's steps and guidance left unset take the base variant's. Each numeric value is checked
by the rule its flag uses (`core/validate.py`), so a request built in code is refused as the command line would
refuse it: ValueError naming the flag.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from pm_lightning.core import validate as v
from pm_lightning.inference.cache import CacheConfig, cache_from_args
from pm_lightning.models.variants import find_variant, sampler_defaults

FRAME_COUNTS = (4, 9)  # the grid layouts (data/grid.layout_for): 2x2 and 3x3
CHECKS = {"seed": v.SEED, "num_inference_steps": v.SAMPLER_STEPS, "guidance": v.GUIDANCE, "resolution": v.SIDE,
          "cell": v.SIDE, "insert_batch": v.POSITIVE_INT}  # fmt: skip


@dataclass
class GenerationRequest:
    """One generation: the prompt and where it goes, the LoRA files, the sampler and the adaptive-steps settings.
    (The device / dtype are the session's Runtime; the adaptive thresholds its AdaptiveConfig.)"""

    prompt: str
    out: Path
    base: str = "tiny"  # Flux variant, diffusers directory or hub id
    domain: str | None = None  # training domain (its stage-1 LoRA); None -> unseen
    seed: int = 0
    frames: int | None = None  # None: the synthetic domain's count, else 9
    resolution: int | None = None  # None: the variant's
    steps: list[str] | None = None  # one step text per frame (Delta_sem)
    num_inference_steps: int | None = None  # None: the variant's
    guidance: float | None = None  # None: the variant's
    stage1: Path | None = None
    extra_lora: list[tuple[Path, float]] = field(default_factory=list)  # stacked style LoRAs (file, weight)
    image: Path | None = None  # ReCraft: the finished image
    recraft: Path | None = None
    recraft_fuse: Path | None = None
    adaptive: bool = False
    stage2: Path | None = None
    stage2_fuse: Path | None = None
    cell: int | None = None  # stage-2 frame size; None: the frames' size
    clip: str = "tiny"  # evaluators of the adaptive steps (Encoders.load specs)
    dino: str = "tiny"
    insert_batch: int = 8  # stage-2 insertions sampled together per call
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self):
        for name, rule in CHECKS.items():
            if getattr(self, name) is not None:
                setattr(self, name, rule.check(getattr(self, name), f"--{name.replace('_', '-')}:"))
        if self.frames is not None and self.frames not in FRAME_COUNTS:
            raise ValueError(f"--frames: must be one of {FRAME_COUNTS}, got {self.frames!r}")
        steps, guidance = sampler_defaults(find_variant(self.base))
        self.num_inference_steps = steps if self.num_inference_steps is None else self.num_inference_steps
        self.guidance = guidance if self.guidance is None else self.guidance


def request_from_args(args: argparse.Namespace, **given) -> GenerationRequest:
    """The request of parsed `generate` / `adapt` flags (the fields the namespace has), `given` values first."""
    names = {f.name for f in fields(GenerationRequest)} - {"cache"}
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    return GenerationRequest(**{**values, "cache": cache_from_args(args), **given})
