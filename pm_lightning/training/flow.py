"""Rectified-flow math shared by both stages (SD3 / Flux conventions; t = 1 is pure noise)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from numpy.polynomial import hermite_e

from pm_lightning.core.validate import FiniteFloat, NonNegativeFloat, PositiveFloat

SHIFT_MODES = ("constant", "flux", "none")


@dataclass
class FlowConfig:
    """How training timesteps are drawn.

    Attributes:
        shift_mode: "constant" = fixed shift `shift`; "flux" = Flux's resolution-dependent shift
            (mu linear in the image token count); "none" = plain logit-normal.
        shift: the constant shift s (ProcessMaker stage-1 default 3.1582).
        logit_mean: mean of the logit-normal.
        logit_std: standard deviation of the logit-normal.
        guidance: the constant Flux-dev guidance input during training.
    """

    shift_mode: Literal["constant", "flux", "none"] = "constant"
    shift: PositiveFloat = 3.1582
    logit_mean: FiniteFloat = 0.0
    logit_std: PositiveFloat = 1.0
    guidance: NonNegativeFloat = 1.0

    def __post_init__(self):
        if self.shift_mode not in SHIFT_MODES:
            raise ValueError(f"flow.shift_mode must be one of {SHIFT_MODES}, got {self.shift_mode!r}")
        if self.shift <= 0:
            raise ValueError(f"flow.shift must be > 0, got {self.shift}")
        if self.logit_std <= 0:
            raise ValueError(f"flow.logit_std must be > 0, got {self.logit_std}")


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 shift: t' = s t / (1 + (s - 1) t); s > 1 moves mass towards noise."""
    return shift * t / (1 + (shift - 1) * t)


def flux_mu(
    image_seq_len: int, base_len: int = 256, max_len: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15
) -> float:
    """Flux's resolution-dependent mu: linear in the number of image tokens."""
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + base_shift - slope * base_len


def timesteps_from_normal(z: torch.Tensor, cfg: FlowConfig, image_seq_len: int) -> torch.Tensor:
    """Training timesteps from standard normals z (any shape, any float dtype): logit-normal, then shifted as
    configured. The one map from z to t: `sample_timesteps` draws z, `timestep_mean` integrates over it."""
    t = torch.sigmoid(z * cfg.logit_std + cfg.logit_mean)
    if cfg.shift_mode == "constant":
        return shift_timesteps(t, cfg.shift)
    if cfg.shift_mode == "flux":
        return shift_timesteps(t, math.exp(flux_mu(image_seq_len)))
    return t


def sample_timesteps(
    batch: int, cfg: FlowConfig, image_seq_len: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """(B,) training timesteps in (0, 1): logit-normal, then shifted as configured."""
    return timesteps_from_normal(torch.randn(batch, generator=generator, device=device), cfg, image_seq_len)  # (B,)


QUADRATURE_NODES = 64
"""Gauss-Hermite nodes of `timestep_mean`. Its error against scipy.integrate.quad (shift 3.1582): below 1e-13 at 32
nodes and 1e-15 at 64 for logit_std 1, about 1e-10 at 64 for logit_std 2 (sigmoid's poles at +-i pi / logit_std
bound the convergence)."""


@functools.cache
def _hermite_rule(nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes z_i and weights w_i / sqrt(2 pi) with sum_i w_i f(z_i) ~ E[f(Z)], Z ~ N(0, 1), float64."""
    z, w = hermite_e.hermegauss(nodes)  # weight function exp(-z^2 / 2): the weights sum to sqrt(2 pi)
    return torch.from_numpy(z), torch.from_numpy(w / math.sqrt(2 * math.pi))


def timestep_mean(
    fn: Callable[[torch.Tensor], torch.Tensor], cfg: FlowConfig, image_seq_len: int, nodes: int = QUADRATURE_NODES
) -> float:
    """E_t[fn(t)] over the training timesteps of `cfg` (what `sample_timesteps` draws at `image_seq_len` tokens),
    computed, not sampled: t = timesteps_from_normal(z) with z ~ N(0, 1), integrated by Gauss-Hermite quadrature
    (numpy.polynomial.hermite_e, `nodes` points, float64). `fn` maps a tensor of t to values elementwise."""
    z, w = _hermite_rule(nodes)
    return float((fn(timesteps_from_normal(z, cfg, image_seq_len)).double() * w).sum())


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, with t (B,) broadcast over the other dims."""
    t = t.view(-1, *([1] * (x0.dim() - 1)))  # (B, 1, ...)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching target v = eps - x0."""
    return noise - x0


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean squared error over all non-batch dims, optionally over `weight`ed elements only."""
    err = (pred.float() - target.float()) ** 2
    if weight is None:
        return err.flatten(1).mean(1)
    weight = weight.expand_as(err).float()
    return (err * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)


def step_generator(seed: int, step: int, rank: int = 0, device=None) -> torch.Generator:
    """A generator that depends only on (seed, step, rank), so a resumed run draws the same noise."""
    g = torch.Generator(device=device or "cpu")
    g.manual_seed((seed * 1_000_003 + step * 1009 + rank) % (2**63 - 1))
    return g
