"""Scores: CLIP score (torchmetrics' formula) and objective proxies of a frame sequence.

Definitions (also in docs/EVALUATION.md), for features x_0 .. x_{T-1} of a sequence's frames:
- dist(a, b): "cosine" = 1 - cos(a, b) (CLIP image space), "l2" = ||a - b|| / sqrt(D) (RMS pixel difference).
- progress monotonicity: with d_k = dist(x_k, g), g = the ground-truth final frame when given,
  else the sequence's own last frame, the fraction of the T-1 transitions k -> k+1 with
  d_{k+1} < d_k - tol.
- step evenness: with s_k = dist(x_k, x_{k+1}) (k = 0 .. T-2), 1 - std(s) / mean(s)
  (population std), clipped to [0, 1]; 0 when mean(s) = 0 (all frames identical).
- coherence proxy: monotonicity x evenness (an objective stand-in for the judge's Coherence, in [0, 1]).
- progress index: frame k of T meets frame j(k) = round(k (T'-1) / (T-1)) of T' (the same fraction of the way
  through); GT sim pairs frames by it, and a final sequence is resampled by it into a fixed frame count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from pm_lightning.models.encoders import Encoders

METRICS = ("cosine", "l2")


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(N,) = 100 * max(cos(image, text), 0), row by row (torchmetrics' CLIPScore per pair)."""
    cos = (F.normalize(image_emb.float(), dim=-1) * F.normalize(text_emb.float(), dim=-1)).sum(-1)  # (N,)
    return 100 * cos.clamp(min=0)


def grid_and_frame_clip_scores(
    enc: Encoders, grids: list[Image.Image], frames: list[list[Image.Image]], prompts: list[str]
) -> dict[str, torch.Tensor]:
    """{"grid": (N,) CLIP score of each whole grid, "frames": (N,) mean CLIP score over each sample's frames}."""
    if not (len(grids) == len(frames) == len(prompts)):
        raise ValueError(
            f"{len(grids)} grids, {len(frames)} frame lists and {len(prompts)} prompts: need one of each per sample"
        )
    text = enc.text_embeddings(prompts)  # (N, D)
    grid = clip_score(enc.image_embeddings(grids), text)
    counts = [len(f) for f in frames]
    flat = enc.image_embeddings([im for fs in frames for im in fs])  # (sum T, D)
    per_frame = clip_score(flat, text.repeat_interleave(torch.tensor(counts), dim=0))
    return {"grid": grid, "frames": torch.stack([s.mean() for s in per_frame.split(counts)])}


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Row-wise dist(a_i, b_i) for (T, D) tensors (b may be (D,) and broadcast)."""
    a, b = a.float(), b.float().expand_as(a)
    if metric == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=-1)
    if metric == "l2":
        return (a - b).norm(dim=-1) / a.shape[-1] ** 0.5
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def progress_monotonicity(
    features: torch.Tensor, target: torch.Tensor | None = None, metric: str = "cosine", tol: float = 0.0
) -> float:
    """Fraction of transitions k -> k+1 that move strictly closer to the final frame (`target`, else the last)."""
    if features.shape[0] < 2:
        return float("nan")
    goal = features[-1] if target is None else target.reshape(-1)
    d = pairwise_distance(features, goal, metric)  # (T,)
    return (d[1:] < d[:-1] - tol).float().mean().item()


def step_evenness(features: torch.Tensor, metric: str = "cosine") -> float:
    """1 - coefficient of variation of adjacent-frame distances, clipped to [0, 1]."""
    if features.shape[0] < 2:
        return float("nan")
    s = pairwise_distance(features[:-1], features[1:], metric)  # (T-1,)
    mean = s.mean()
    if mean <= 0:
        return 0.0
    return (1 - s.std(unbiased=False) / mean).clamp(0, 1).item()


def coherence_proxy(monotonicity: float, evenness: float) -> float:
    """Coh proxy = monotonicity x evenness, in [0, 1]: 1 only when every step moves towards the result and every step
    changes the picture by the same amount; 0 when either fails completely; nan when either is undefined (T < 2)."""
    return monotonicity * evenness


def progress_index(t: int, tt: int) -> torch.Tensor:
    """(t,) indices into a sequence of `tt` frames: j(k) = round(k (tt-1) / (t-1)), the frame the same fraction of
    the way through (half to even, torch.round); [0] when t == 1."""
    if t == 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.round(torch.arange(t) * (tt - 1) / (t - 1)).long()


def ground_truth_similarity(features: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean cosine of generated frame k with true frame j(k) = round(k (T'-1)/(T-1)) (same progress fraction)."""
    idx = progress_index(features.shape[0], truth.shape[0])
    return F.cosine_similarity(features.float(), truth[idx].float(), dim=-1).mean().item()


def pixel_features(images: list[Image.Image], size: int = 64) -> torch.Tensor:
    """(T, 3*size*size) RGB in [0, 1], every image resized to size x size (so resolutions compare)."""
    arrs = [np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255 for im in images]
    return torch.from_numpy(np.stack(arrs)).reshape(len(images), -1)


def sequence_proxies(
    features: torch.Tensor, truth: torch.Tensor | None = None, metric: str = "cosine"
) -> dict[str, float]:
    """{"monotonicity", "evenness"} of a sequence's (T, D) features (+ "gt_similarity" given (T', D) true-frame features).

    Monotonicity aims at the true final frame when `truth` is given, else at the sequence's own last frame.
    """
    target = None if truth is None or len(truth) == 0 else truth[-1]
    out = {"monotonicity": progress_monotonicity(features, target, metric), "evenness": step_evenness(features, metric)}
    if target is not None and metric == "cosine":
        out["gt_similarity"] = ground_truth_similarity(features, truth)
    return out
