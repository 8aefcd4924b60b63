"""Training-free caching of transformer computation across sampler steps, through diffusers' own hooks.

`--cache none|first-block|taylorseer`:
- first-block (First Block Cache, ParaAttention): at each step the first block runs; when its output residual
  changed by less than `threshold` (relative mean absolute difference) since the last full step, the other
  blocks are skipped and their cached residual is reused (`diffusers.FirstBlockCacheConfig`).
- taylorseer (TaylorSeer, arXiv 2503.06923): full steps every `interval` steps after `warmup` full steps; in
  between, the attention outputs are predicted by a first-order Taylor expansion (`diffusers.TaylorSeerCacheConfig`).

The hooks sit on the transformer's blocks, so they compose with the LoRA layers inside them; the clean reference
latents are written back by the pipeline's step-end callback, outside the transformer, on every step (cached or
not). diffusers resets the hooks' state at the end of every pipeline call. Speed and quality: docs/BENCHMARKS.md.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from pm_lightning.core import validate as v

MODES = ("none", "first-block", "taylorseer")


@dataclass(frozen=True)
class CacheConfig:
    """Which cache, and how aggressive (docs/ADAPTIVE.md says why the defaults)."""

    mode: str = "none"
    threshold: float = 0.2  # first-block: relative change of the first block's residual below which a step is cached
    interval: int = 6  # taylorseer: a full step every `interval` steps
    warmup: int = 1  # taylorseer: full steps before any prediction

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}, got {self.mode!r}")
        if self.threshold < 0 or self.interval < 1 or self.warmup < 0:
            raise ValueError(f"cache needs threshold >= 0, interval >= 1, warmup >= 0, got {self}")

    def diffusers_config(self):
        """The diffusers hook config for `mode` (None for "none")."""
        if self.mode == "first-block":
            # lazy: diffusers' hooks, 12 s before generate / adapt read their flags (docs/ARCHITECTURE.md, "Start-up")
            from diffusers import FirstBlockCacheConfig

            return FirstBlockCacheConfig(threshold=self.threshold)
        if self.mode == "taylorseer":
            # lazy: torch and diffusers' hooks, which generate / adapt load after parsing (the flags import this module)
            import torch
            from diffusers import TaylorSeerCacheConfig

            return TaylorSeerCacheConfig(
                cache_interval=self.interval, disable_cache_before_step=self.warmup, taylor_factors_dtype=torch.float32
            )
        return None


@contextmanager
def transformer_cache(transformer, cfg: CacheConfig | None):
    """Enable the cache on `transformer` inside the block (nothing for None / "none"); always disabled after."""
    hook_cfg = cfg.diffusers_config() if cfg is not None else None
    if hook_cfg is None:
        yield
        return
    transformer.enable_cache(hook_cfg)
    try:
        yield
    finally:
        transformer.disable_cache()


def add_cache_flags(parser) -> None:
    """`--cache`, `--cache-threshold`, `--cache-interval`, `--cache-warmup` (CacheConfig's fields)."""
    group = parser.add_argument_group("step caching (diffusers hooks; docs/ADAPTIVE.md)")
    group.add_argument("--cache", choices=MODES, default="none", help="cache transformer work across sampler steps")
    group.add_argument("--cache-threshold", type=v.NON_NEGATIVE, default=CacheConfig.threshold,
                       help="first-block threshold")  # fmt: skip
    group.add_argument("--cache-interval", type=v.Rule(int, 1, 1000), default=CacheConfig.interval,
                       help="taylorseer: full step every N")  # fmt: skip
    group.add_argument("--cache-warmup", type=v.Rule(int, 0, 1000), default=CacheConfig.warmup,
                       help="taylorseer: full steps first")  # fmt: skip


def cache_from_args(args) -> CacheConfig:
    return CacheConfig(args.cache, args.cache_threshold, args.cache_interval, args.cache_warmup)
