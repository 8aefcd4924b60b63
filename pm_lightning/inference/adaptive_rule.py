"""The adaptive-steps rule (ProcessMaker stage-2 inference), pure functions: Delta terms, thresholds, decisions.

For frames f_1..f_n, every adjacent pair (i, i+1) gets
    Delta = w_glob (1 - cos(v_i, v_j)) + w_loc chamfer(P_i, P_j) + w_sem (1 - cos(u_i, u_j))
(v: CLIP image embeddings, P: L2-normalised DINO patch tokens, u: CLIP text embeddings of the step
texts; without step texts the semantic term is dropped and the weights renormalised). With mu, sigma
of the sequence's Deltas: insert where Delta > max(mu + k1 sigma, add_floor), delete where
Delta < min(mu - k2 sigma, del_ceiling). add_floor = 0 and del_ceiling = inf are "no guard" (every Delta term is
>= 0, so mu + k1 sigma >= 0; mu - k2 sigma is finite): `PAPER_RULE` is ProcessMaker's rule as published, k1 = 0.8,
k2 = 1.0 and no guards. The rounds that apply it: `inference/adaptive.py`.
Calibrate them: `python -m pm_lightning.calibrate_adaptive` (docs/ADAPTIVE.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from pm_lightning.inference.adaptive_ranges import FIELD_RULES

TERMS = ("glob", "loc", "sem")


@dataclass
class AdaptiveConfig:
    """Adaptive-steps settings; the defaults are ProcessMaker's, the guards calibrated (docs/ADAPTIVE.md)."""

    w_glob: float = 0.6  # weight of Delta_glob (CLIP image cosine distance)
    w_loc: float = 0.2  # weight of Delta_loc (DINO patch Chamfer distance)
    w_sem: float = 0.2  # weight of Delta_sem (CLIP text cosine distance of the step texts)
    k1: float = 0.8  # tau_add = mu + k1 sigma
    k2: float = 1.0  # tau_del = mu - k2 sigma
    add_floor: float = 0.48  # insert only where Delta > max(tau_add, add_floor); 0 = no guard
    del_ceiling: float = 0.015  # delete only where Delta < min(tau_del, del_ceiling); math.inf = no guard
    two_frame_ratio: float = 1.5  # insert two frames (not one) where Delta >= ratio * insert threshold
    min_frames: int = 2  # never delete below this many frames
    max_frames: int = 16  # never insert above this many frames
    max_rounds: int = 3  # score -> decide -> edit rounds at most

    def __post_init__(self):
        for name in ("w_glob", "w_loc", "w_sem", "k1", "k2", "add_floor", "del_ceiling"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):  # a number, not text that parses as one
                raise ValueError(f"AdaptiveConfig.{name} must be {FIELD_RULES[name].describe()}, got {value!r}")
            FIELD_RULES[name].check(value, f"AdaptiveConfig.{name}")
        if self.w_glob + self.w_loc <= 0:
            raise ValueError("AdaptiveConfig.w_glob + w_loc must be > 0 (the visual terms always exist)")
        if self.add_floor > 0 and math.isfinite(self.del_ceiling) and self.del_ceiling >= self.add_floor:
            raise ValueError(
                f"AdaptiveConfig.del_ceiling ({self.del_ceiling}) must be below add_floor ({self.add_floor}) "
                "when both guards are on"
            )
        if self.two_frame_ratio < 1:
            raise ValueError(f"AdaptiveConfig.two_frame_ratio must be >= 1, got {self.two_frame_ratio}")
        if not 2 <= self.min_frames <= self.max_frames:
            raise ValueError(
                f"AdaptiveConfig needs 2 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}"
            )
        if self.max_rounds < 0:
            raise ValueError(f"AdaptiveConfig.max_rounds must be >= 0, got {self.max_rounds}")

    @classmethod
    def from_dict(cls, values: dict) -> AdaptiveConfig:
        """Build from a mapping; unknown keys are an error naming them."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown AdaptiveConfig keys {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**values)


PAPER_RULE = AdaptiveConfig(k1=0.8, k2=1.0, add_floor=0.0, del_ceiling=math.inf)  # ProcessMaker's rule, no guards


# ---------------------------------------------------------------- Delta terms (pure)


def global_delta(v: torch.Tensor) -> torch.Tensor:
    """(n, D) L2-normalised CLIP image embeddings -> (n-1,) 1 - cos(v_i, v_{i+1})."""
    return 1 - (v[:-1] * v[1:]).sum(-1)


def batched_chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, P, E), (B, Q, E) -> (B,): mean over patches p of a of min over patches q of b of ||p - q||."""
    a, b = a.float(), b.float()
    d2 = a.pow(2).sum(-1)[:, :, None] + b.pow(2).sum(-1)[:, None, :] - 2 * a @ b.transpose(1, 2)  # (B, P, Q)
    return d2.clamp(min=0).sqrt().min(dim=-1).values.mean(dim=-1)


def patch_chamfer(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean over patches of p (P, E) of the distance to the nearest patch of q (Q, E)."""
    return batched_chamfer(p[None], q[None])[0]


def local_delta(tokens: torch.Tensor) -> torch.Tensor:
    """(n, P, E) L2-normalised patch tokens -> (n-1,) Chamfer distance from frame i to frame i+1."""
    return batched_chamfer(tokens[:-1], tokens[1:])


def semantic_delta(u: torch.Tensor) -> torch.Tensor:
    """(n, D) L2-normalised text embeddings of the step texts -> (n-1,) 1 - cos(u_i, u_{i+1})."""
    return 1 - (u[:-1] * u[1:]).sum(-1)


def effective_weights(cfg: AdaptiveConfig, has_sem: bool) -> dict[str, float]:
    """The weights actually used: all three, or glob and loc renormalised to sum to w_glob + w_loc + w_sem."""
    weights = {"glob": cfg.w_glob, "loc": cfg.w_loc, "sem": cfg.w_sem}
    if has_sem:
        return weights
    total, visual = sum(weights.values()), cfg.w_glob + cfg.w_loc
    return {"glob": cfg.w_glob * total / visual, "loc": cfg.w_loc * total / visual, "sem": 0.0}


def combine(terms: dict[str, torch.Tensor | None], weights: dict[str, float]) -> torch.Tensor:
    """Delta = sum_k w_k Delta_k over the terms present (a missing term must carry weight 0)."""
    out = None
    for name in TERMS:
        if terms.get(name) is None:
            if weights.get(name, 0.0):
                raise ValueError(f"Delta_{name} is missing but has weight {weights[name]}")
            continue
        part = weights[name] * terms[name].float()
        out = part if out is None else out + part
    return out


@dataclass
class Thresholds:
    """The round's statistics and the thresholds derived from them."""

    mu: float
    sigma: float
    tau_add: float
    tau_del: float
    add: float  # max(tau_add, add_floor)
    delete: float  # min(tau_del, del_ceiling)


def thresholds(delta: torch.Tensor, cfg: AdaptiveConfig) -> Thresholds:
    """mu, population sigma of the Deltas; tau_add = mu + k1 sigma, tau_del = mu - k2 sigma, then the guards."""
    mu = float(delta.mean())
    sigma = float(delta.std(unbiased=False)) if delta.numel() > 1 else 0.0
    tau_add, tau_del = mu + cfg.k1 * sigma, mu - cfg.k2 * sigma
    return Thresholds(mu, sigma, tau_add, tau_del, max(tau_add, cfg.add_floor), min(tau_del, cfg.del_ceiling))


# ---------------------------------------------------------------- decisions (pure)


@dataclass
class Decision:
    """One proposed edit of a round: insert `n` frames into pair (i, i+1), or delete frame `frame` of that pair."""

    action: str  # "insert" | "delete"
    pair: int  # i of the pair (i, i+1)
    delta: float
    threshold: float
    n: int = 0  # frames to insert
    frame: int = -1  # frame to delete
    applied: bool = True
    reason: str = ""


def frame_to_drop(i: int, delta: Sequence[float], n_frames: int) -> int:
    """Which frame of the pair (i, i+1) to delete: never the first or last; else the one whose removal
    merges the smaller neighbouring step (drop i when Delta(i-1, i) <= Delta(i+1, i+2)); -1 if neither may go."""
    allowed = [k for k in (i, i + 1) if 0 < k < n_frames - 1]
    if len(allowed) < 2:
        return allowed[0] if allowed else -1
    left, right = float(delta[i - 1]), float(delta[i + 1])
    return i if left <= right else i + 1


def decide(delta: torch.Tensor, thr: Thresholds, cfg: AdaptiveConfig) -> list[Decision]:
    """The round's edits for pair Deltas (n-1,): candidates, then bounds and one edit per neighbourhood.

    Insertions are considered first, largest Delta first; then deletions, smallest Delta first. An edit
    locks the frames it touches (an insertion its pair, a deletion the dropped frame and its two
    neighbours), so later candidates touching them wait for the next round, which rescores. Bounds:
    the running frame count stays within [min_frames, max_frames] (two insertions shrink to one when
    only one fits). Skipped candidates are returned with applied=False and the reason.
    """
    n_frames = delta.numel() + 1
    values = [float(d) for d in delta]
    out: list[Decision] = []
    count, locked = n_frames, set()
    for i in sorted((i for i, d in enumerate(values) if d > thr.add), key=lambda i: -values[i]):
        n = 2 if values[i] >= cfg.two_frame_ratio * thr.add else 1
        d = Decision("insert", i, values[i], thr.add, n=n)
        if locked & {i, i + 1}:
            d.applied, d.reason = False, "a neighbouring edit came first this round"
        elif count + 1 > cfg.max_frames:
            d.applied, d.reason = False, f"max_frames {cfg.max_frames} reached"
        else:
            if count + n > cfg.max_frames:
                d.n, d.reason = 1, f"two frames clipped to one by max_frames {cfg.max_frames}"
            count += d.n
            locked |= {i, i + 1}
        out.append(d)
    for i in sorted((i for i, d in enumerate(values) if d < thr.delete), key=lambda i: values[i]):
        k = frame_to_drop(i, values, n_frames)
        d = Decision("delete", i, values[i], thr.delete, frame=k)
        if k < 0:
            d.applied, d.reason = False, "the pair holds only the first and last frames"
        elif locked & {k - 1, k, k + 1}:
            d.applied, d.reason = False, "a neighbouring edit came first this round"
        elif count - 1 < cfg.min_frames:
            d.applied, d.reason = False, f"min_frames {cfg.min_frames} reached"
        else:
            count -= 1
            locked |= {k - 1, k, k + 1}
        out.append(d)
    return out
