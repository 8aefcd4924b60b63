"""Self-supervised representation alignment (ProcessMaker stage 1): hooks, distance, lambda(t) schedules.

Teacher = the same Flux transformer with its adapters disabled, on the same (x_t, t, text), under
no_grad; student = the adapters enabled, i.e. the ordinary training forward pass. Both are read at
the outputs of blocks ``L`` of the concatenated block list ``transformer_blocks + single_transformer_blocks``
(double-stream blocks first), image tokens only (element 1 of each block's
``(encoder_hidden_states, hidden_states)`` output).

    L_stage1 = L_fm + lambda(t) * L_sup,   lambda(t) = lambda0 * s(t)   (per sample)
    with normalize, s(t) / E_t[s(t)] in place of s(t): mean 1 over the training timesteps
    L_sup    = mean over l in L of D_l,    D_l = mean_tokens(1 - cos(hT, hS)) + gamma * mean_tokens(mean_channels((hT - hS)^2))

Typical use in a training step::

    teacher = teacher_features(transformer, inputs, layers)          # no grad, stops after max(layers)
    with capture_features(transformer, layers) as student:           # keeps the graph (no detach)
        pred = transformer(**inputs)[0]
    loss = fm_loss + (alignment_weight(t, cfg) * alignment_loss(student, teacher, cfg.gamma)).mean()

Unlike the reference code, student features are never detached and no token sub-sampling is done,
so teacher and student always compare the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pm_lightning.core.validate import NonNegativeFloat, NonNegativeInt
from pm_lightning.models.adapter_routing import adapters_disabled

FLUX_DEV_DEPTH = 57  # 19 double + 38 single blocks
FLUX_DEV_LAYERS = (4, 9, 14, 19, 29)

SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "constant": lambda t: torch.ones_like(t),
    "linear": lambda t: 1.0 - t,  # strongest near the data (t = 0), off at pure noise (t = 1)
    "cosine": lambda t: torch.cos(0.5 * math.pi * t),
    "sigmoid": lambda t: torch.sigmoid(-10.0 * (t - 0.5)),  # soft step: ~1 below t = 0.5, ~0 above
}
"""Named s(t) over the diffusion time t in [0, 1] (t = 1 is pure noise); each maps (B,) -> (B,)."""


@dataclass
class AlignmentConfig:
    """Representation-alignment settings of stage 1 (ProcessMaker: lambda0 = 0.5, gamma = 0.1)."""

    enabled: bool = True
    """Add lambda(t) * L_sup to the flow-matching loss."""
    layers: list[NonNegativeInt] | None = None
    """Block indices in the concatenated list; None = FLUX.1-dev's (4, 9, 14, 19, 29) mapped by relative depth."""
    lambda0: NonNegativeFloat = 0.5
    """Overall weight lambda0 of the alignment term."""
    schedule: str = "constant"
    """Name of s(t) in SCHEDULES (the paper leaves s unspecified; constant is the neutral choice, docs/STAGE1.md)."""
    normalize: bool = False
    """Divide s(t) by its mean E_t[s(t)] over the training timestep distribution (the flow sampler), so lambda(t)
    averages lambda0 as the constant schedule does and only its spread over t changes."""
    gamma: NonNegativeFloat = 0.1
    """Weight of the MSE part of the per-layer distance."""

    def __post_init__(self) -> None:
        if self.lambda0 < 0:
            raise ValueError(f"AlignmentConfig.lambda0 must be >= 0, got {self.lambda0}")
        if self.gamma < 0:
            raise ValueError(f"AlignmentConfig.gamma must be >= 0, got {self.gamma}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"AlignmentConfig.schedule: unknown {self.schedule!r}; known: {sorted(SCHEDULES)}")
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]
            if not self.layers or min(self.layers) < 0 or len(set(self.layers)) != len(self.layers):
                raise ValueError(f"AlignmentConfig.layers must be unique non-negative block indices, got {self.layers}")

    def resolve(self, num_blocks: int) -> list[int]:
        """The hooked block indices for a transformer with `num_blocks` blocks in all."""
        return resolve_layers(num_blocks, self.layers)


# ---------------------------------------------------------------------------------------------- layers


def align_blocks(transformer: nn.Module) -> list[nn.Module]:
    """The concatenated block list: double-stream blocks, then single-stream blocks."""
    return list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)


def resolve_layers(
    num_blocks: int,
    layers: list[int] | tuple[int, ...] | None = None,
    reference_depth: int = FLUX_DEV_DEPTH,
    reference_layers: tuple[int, ...] = FLUX_DEV_LAYERS,
) -> list[int]:
    """Sorted unique block indices to hook in a model with `num_blocks` blocks.

    Explicit `layers` are checked against `num_blocks` and returned sorted. Otherwise each reference
    index i (of a `reference_depth`-block model) maps by relative depth to
    ``floor(i * (num_blocks - 1) / (reference_depth - 1) + 0.5)`` (round half up), so the first and
    last blocks map onto each other and FLUX.1-dev maps to itself; duplicates that shallow models
    produce are merged (e.g. 5 blocks -> [0, 1, 2], 6 blocks -> [0, 1, 2, 3]).
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if layers is not None:
        bad = [i for i in layers if not 0 <= int(i) < num_blocks]
        if bad or not layers:
            raise ValueError(
                f"alignment layers {list(layers)} must be non-empty indices in [0, {num_blocks - 1}]; bad: {bad}"
            )
        return sorted({int(i) for i in layers})
    if reference_depth < 2:
        raise ValueError(f"reference_depth must be >= 2, got {reference_depth}")
    scale = (num_blocks - 1) / (reference_depth - 1)
    return sorted({math.floor(i * scale + 0.5) for i in reference_layers})


# ---------------------------------------------------------------------------------------------- hooks


class _StopForward(Exception):
    """Raised by the hook on the deepest tapped block to end the teacher pass early."""


_IN_TEACHER: ContextVar[bool] = ContextVar("pm_alignment_in_teacher", default=False)
"""True during teacher_features, so an open student capture does not record teacher outputs."""


@contextmanager
def _tap(transformer: nn.Module, layers: list[int] | None, stop: bool = False) -> Iterator[dict[int, torch.Tensor]]:
    blocks = align_blocks(transformer)
    layers = resolve_layers(len(blocks), layers)
    feats: dict[int, torch.Tensor] = {}
    deepest = layers[-1]

    def make_hook(idx: int):
        def hook(module, args, output):
            if _IN_TEACHER.get() != stop:
                return
            # First output only: with gradient checkpointing the block re-runs during backward.
            feats.setdefault(idx, output[1])  # (B, N_img, D) image tokens
            if stop and idx == deepest:
                raise _StopForward

        return hook

    handles = [blocks[i].register_forward_hook(make_hook(i)) for i in layers]
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_features(transformer: nn.Module, layers: list[int] | None) -> Iterator[dict[int, torch.Tensor]]:
    """Record the image-token outputs of blocks `layers` during forwards run inside the context.

    `layers` index the concatenated block list (None = resolve_layers' default for this depth).
    Yields a dict {block index: (B, N_img, D) tensor} filled by the first forward in the context.
    Tensors keep their autograd graph (nothing is detached), so a loss on them trains the adapters.
    Hooks are removed on exit; exit before backward when gradient checkpointing is on.
    """
    with _tap(transformer, layers, stop=False) as feats:
        yield feats


def teacher_features(transformer: nn.Module, inputs: dict, layers: list[int] | None) -> dict[int, torch.Tensor]:
    """Teacher features: the base model (adapters disabled), no grad, same inputs; stops after max(layers).

    `inputs` are the transformer's forward kwargs (hidden_states = x_t, timestep = t, text, ids).
    Hooks are removed and adapters re-enabled even if the forward raises.
    """
    token = _IN_TEACHER.set(True)
    try:
        with adapters_disabled(transformer), torch.no_grad(), _tap(transformer, layers, stop=True) as feats:
            try:
                transformer(**inputs)
            except _StopForward:
                pass
    finally:
        _IN_TEACHER.reset(token)
    return dict(feats)


# ---------------------------------------------------------------------------------------------- math


def layer_distance(h_t: torch.Tensor, h_s: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """Per-sample D = mean_tokens(1 - cos(hT, hS)) + gamma * mean_tokens(mean_channels((hT - hS)^2)).

    h_t, h_s: (B, N, C) -> (B,), computed in fp32. 1 - cos is evaluated as 0.5 * |hT/|hT| - hS/|hS||^2,
    equal for non-zero vectors, exactly 0 for identical ones and free of cancellation near cos = 1.
    """
    if h_t.shape != h_s.shape:
        raise ValueError(f"teacher and student features differ in shape: {tuple(h_t.shape)} vs {tuple(h_s.shape)}")
    h_t, h_s = h_t.float(), h_s.float()
    u_t, u_s = F.normalize(h_t, dim=-1), F.normalize(h_s, dim=-1)  # (B, N, C)
    cos_dist = 0.5 * (u_t - u_s).pow(2).sum(-1)  # (B, N)
    mse = (h_t - h_s).pow(2).mean(-1)  # (B, N)
    return (cos_dist + gamma * mse).mean(-1)  # (B,)


def alignment_loss(
    student: dict[int, torch.Tensor], teacher: dict[int, torch.Tensor], gamma: float = 0.1
) -> torch.Tensor:
    """L_sup per sample: the mean over hooked layers of layer_distance(teacher, student) -> (B,)."""
    if set(student) != set(teacher) or not student:
        raise ValueError(
            f"student layers {sorted(student)} and teacher layers {sorted(teacher)} must match and be non-empty"
        )
    per_layer = [layer_distance(teacher[i], student[i], gamma) for i in sorted(student)]  # L x (B,)
    return torch.stack(per_layer).mean(0)  # (B,)


def schedule_value(t: torch.Tensor, schedule: str) -> torch.Tensor:
    """s(t) for a named schedule, with the known names in the error."""
    try:
        fn = SCHEDULES[schedule]
    except KeyError:
        raise KeyError(f"unknown alignment schedule {schedule!r}; known: {sorted(SCHEDULES)}") from None
    return fn(t.float())


def alignment_weight(t: torch.Tensor, cfg: AlignmentConfig, schedule_mean: float | None = None) -> torch.Tensor:
    """Per-sample lambda(t) = lambda0 * s(t); t: (B,) in [0, 1] -> (B,).

    With `cfg.normalize`, s(t) is divided by `schedule_mean` = E_t[s(t)] over the training timesteps, which the
    caller computes from its sampler (stage 1: `flow.timestep_mean`; models/ does not read the sampler) and must give.
    """
    weight = cfg.lambda0 * schedule_value(t, cfg.schedule)
    if not cfg.normalize:
        return weight
    if schedule_mean is None or not schedule_mean > 0:
        raise ValueError(f"alignment.normalize needs E_t[s(t)] > 0 of the timestep sampler, got {schedule_mean}")
    return weight / schedule_mean
