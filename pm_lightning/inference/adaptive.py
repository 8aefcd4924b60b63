"""Sliding-window adaptive steps (ProcessMaker stage-2 inference): Delta terms, thresholds, decisions, rounds.

For frames f_1..f_n, every adjacent pair (i, i+1) gets
    Delta = w_glob (1 - cos(v_i, v_j)) + w_loc chamfer(P_i, P_j) + w_sem (1 - cos(u_i, u_j))
(v: CLIP image embeddings, P: L2-normalised DINO patch tokens, u: CLIP text embeddings of the step
texts; without step texts the semantic term is dropped and the weights renormalised). With mu, sigma
of the sequence's Deltas: insert where Delta > max(mu + k1 sigma, add_floor), delete where
Delta < min(mu - k2 sigma, del_ceiling). Everything up to `decide` is a pure function; `adapt_sequence`
runs the bounded rounds with a `Scorer` and an `insert_fn`, so it is testable without models.
Calibrate them: `python -m pm_lightning.calibrate_adaptive` (docs/ADAPTIVE.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from pm_lightning.data.image_modes import frames_as_rgb, same_size

log = logging.getLogger(__name__)

TERMS = ("glob", "loc", "sem")


@dataclass
class AdaptiveConfig:
    """Adaptive-steps settings; the defaults are ProcessMaker's, the guards calibrated (docs/ADAPTIVE.md)."""

    w_glob: float = 0.6  # weight of Delta_glob (CLIP image cosine distance)
    w_loc: float = 0.2  # weight of Delta_loc (DINO patch Chamfer distance)
    w_sem: float = 0.2  # weight of Delta_sem (CLIP text cosine distance of the step texts)
    k1: float = 0.8  # tau_add = mu + k1 sigma
    k2: float = 1.0  # tau_del = mu - k2 sigma
    add_floor: float = 0.48  # insert only where Delta > max(tau_add, add_floor)
    del_ceiling: float = 0.015  # delete only where Delta < min(tau_del, del_ceiling)
    two_frame_ratio: float = 1.5  # insert two frames (not one) where Delta >= ratio * insert threshold
    min_frames: int = 2  # never delete below this many frames
    max_frames: int = 16  # never insert above this many frames
    max_rounds: int = 3  # score -> decide -> edit rounds at most

    def __post_init__(self):
        for name in ("w_glob", "w_loc", "w_sem", "k1", "k2", "add_floor", "del_ceiling"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"AdaptiveConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.w_glob + self.w_loc <= 0:
            raise ValueError("AdaptiveConfig.w_glob + w_loc must be > 0 (the visual terms always exist)")
        if self.del_ceiling >= self.add_floor:
            raise ValueError(
                f"AdaptiveConfig.del_ceiling ({self.del_ceiling}) must be below add_floor ({self.add_floor})"
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


# ---------------------------------------------------------------- scoring dependency


class Scorer(Protocol):
    """What the rounds need from the evaluators (all outputs L2-normalised)."""

    def image_features(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """((n, D) CLIP image embeddings, (n, P, E) DINO patch tokens)."""

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """(n, D) CLIP text embeddings."""


class EncoderScorer:
    """`Scorer` over `pm_lightning.models.encoders.Encoders`; caches features per image object across rounds."""

    def __init__(self, encoders):
        self.enc = encoders
        self._cache: dict[int, tuple[Image.Image, torch.Tensor, torch.Tensor]] = {}  # id -> (image kept alive, v, P)

    def image_features(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        new = list({id(im): im for im in images if id(im) not in self._cache}.values())
        if new:
            v, p = self.enc.image_embeddings(new), self.enc.patch_tokens(new)  # (m, D), (m, P, E)
            for k, im in enumerate(new):
                self._cache[id(im)] = (im, v[k], p[k])
        return (
            torch.stack([self._cache[id(im)][1] for im in images]),
            torch.stack([self._cache[id(im)][2] for im in images]),
        )

    def text_features(self, texts: list[str]) -> torch.Tensor:
        return self.enc.text_embeddings(list(texts))


def pair_terms(scorer: Scorer, images: list[Image.Image], sem: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """{"glob", "loc", "sem"}: (n-1,) Delta terms of a frame sequence (sem None without step texts)."""
    v, tokens = scorer.image_features(images)
    return {"glob": global_delta(v), "loc": local_delta(tokens), "sem": None if sem is None else semantic_delta(sem)}


# ---------------------------------------------------------------- the rounds


@dataclass
class Frame:
    """One frame of the evolving sequence: image, step text, text embedding (None without texts) and origin."""

    image: Image.Image
    label: str
    text: str | None = None
    sem: torch.Tensor | None = None
    origin: dict = field(default_factory=dict)


InsertFn = Callable[[Image.Image, Image.Image, int], list[Image.Image]]
# every insertion of a round at once: [(frame_a, frame_b, n), ...] -> [n new frames, ...] (one sampler call)
BatchInsertFn = Callable[[list[tuple[Image.Image, Image.Image, int]]], list[list[Image.Image]]]


def one_by_one(insert_fn: InsertFn) -> BatchInsertFn:
    """A per-pair insert function as a batch function (calls it once per request, in order)."""
    return lambda requests: [list(insert_fn(a, b, n)) for a, b, n in requests]


@dataclass
class AdaptiveResult:
    frames: list[Frame]
    report: dict

    @property
    def images(self) -> list[Image.Image]:
        return [f.image for f in self.frames]


def initial_frames(
    images: list[Image.Image], steps: Sequence[str] | None, scorer: Scorer
) -> tuple[list[Frame], str | None]:
    """Frames labelled by input index, with text embeddings when every frame has a step text; and why not, if not."""
    steps = list(steps) if steps else []
    note = None
    if not steps:
        note = "no step texts: Delta_sem dropped, weights renormalised over Delta_glob and Delta_loc"
    elif len(steps) != len(images):
        raise ValueError(f"{len(steps)} step texts for {len(images)} frames: give one per frame or none")
    elif not all(s.strip() for s in steps):
        note = "some step texts are empty: Delta_sem dropped, weights renormalised over Delta_glob and Delta_loc"
    sem = scorer.text_features(steps) if note is None else None
    return [
        Frame(im, str(k), steps[k] if steps else None, None if sem is None else sem[k], {"source": "input", "index": k})
        for k, im in enumerate(images)
    ], note


def _uniform_rgb(images: list[Image.Image]) -> tuple[list[Image.Image], list[str]]:
    """The input frames as RGB of the first frame's size (docs/ADAPTIVE.md, "Input"), and what was converted."""
    if not images:
        return [], []
    rgb = frames_as_rgb(images)
    notes = [f"frame {k}: {im.mode} -> RGB" for k, (im, new) in enumerate(zip(images, rgb)) if new is not im]
    out, resized = same_size(rgb)
    if resized:
        w, h = out[0].size
        notes += [f"frame {k}: {a.size[0]}x{a.size[1]} -> {w}x{h}" for k, a in enumerate(rgb) if a.size != (w, h)]
    return out, notes


def _between(a: Frame, b: Frame, k: int, n: int) -> torch.Tensor | None:
    """Text embedding of the k-th of n inserted frames: the normalised interpolation of its neighbours'."""
    if a.sem is None or b.sem is None:
        return None
    t = k / (n + 1)
    return F.normalize((1 - t) * a.sem + t * b.sem, dim=-1)


def run_round(
    frames: list[Frame],
    scorer: Scorer,
    insert_batch: BatchInsertFn,
    cfg: AdaptiveConfig,
    round_no: int,
    resize_to: tuple[int, int] | None = None,
) -> tuple[list[Frame], dict]:
    """Score every adjacent pair, decide, apply; returns the new frames and the round's report entry."""
    has_sem = all(f.sem is not None for f in frames)
    sem = torch.stack([f.sem for f in frames]) if has_sem else None
    terms = pair_terms(scorer, [f.image for f in frames], sem)
    weights = effective_weights(cfg, has_sem)
    delta = combine(terms, weights)  # (n-1,)
    thr = thresholds(delta, cfg)
    decisions = decide(delta, thr, cfg)
    pairs = [
        {
            "pair": [i, i + 1],
            "frames": [frames[i].label, frames[i + 1].label],
            **{name: (None if terms[name] is None else round(float(terms[name][i]), 6)) for name in TERMS},
            "delta": round(float(delta[i]), 6),
        }
        for i in range(len(frames) - 1)
    ]
    drop = {d.frame for d in decisions if d.applied and d.action == "delete"}
    inserts = {d.pair: d for d in decisions if d.applied and d.action == "insert"}
    pairs_in = sorted(inserts)  # every insertion of the round in one batch, in pair order
    made = insert_batch([(frames[i].image, frames[i + 1].image, inserts[i].n) for i in pairs_in]) if pairs_in else []
    new_frames = dict(zip(pairs_in, made))
    out: list[Frame] = []
    for i, frame in enumerate(frames):
        if i not in drop:
            out.append(frame)
        if i in inserts:
            a, b, n = frame, frames[i + 1], inserts[i].n
            new = list(new_frames[i])
            if len(new) != n:
                raise ValueError(f"insert function returned {len(new)} frames, asked for {n}")
            for k, im in enumerate(new, start=1):
                if resize_to is not None and im.size != resize_to:
                    im = im.resize(resize_to, Image.Resampling.BICUBIC)
                out.append(
                    Frame(
                        im,
                        f"r{round_no}:{a.label}-{b.label}#{k}",
                        None,
                        _between(a, b, k, n),
                        {"source": "inserted", "round": round_no, "between": [a.label, b.label], "k": k, "of": n},
                    )
                )
    report = {
        "round": round_no,
        "frames_before": len(frames),
        "frames_after": len(out),
        "weights": weights,
        "sem_dropped": not has_sem,
        "thresholds": {**asdict(thr), "add_floor": cfg.add_floor, "del_ceiling": cfg.del_ceiling},
        "pairs": pairs,
        "decisions": [
            {
                k: v
                for k, v in asdict(d).items()
                if not (k == "frame" and d.action == "insert") and not (k == "n" and d.action == "delete")
            }
            for d in decisions
        ],
    }
    return out, report


def adapt_sequence(
    images: list[Image.Image],
    scorer: Scorer,
    insert_fn: InsertFn | None = None,
    cfg: AdaptiveConfig | None = None,
    steps: Sequence[str] | None = None,
    insert_batch: BatchInsertFn | None = None,
) -> AdaptiveResult:
    """Bounded rounds of score -> decide -> edit until a round applies nothing (or max_rounds).

    Args:
        images: the frames in temporal order (same size; inserted frames are resized to it).
        scorer: image/text features (`EncoderScorer(Encoders.load(...))`, or a stub in tests).
        insert_fn: (frame_a, frame_b, n) -> n new frames between them (stage 2's `insert_between`), called
            once per insertion; or
        insert_batch: [(frame_a, frame_b, n), ...] -> their new frames, called once per round with every
            insertion the round decided (stage 2's `insert_between_batch`: one sampler call). Give one of the two.
        cfg: thresholds, guards and bounds.
        steps: one step text per frame, or None (Delta_sem dropped, said in the report).

    Returns:
        The final frames (with labels / origins) and a JSON-ready report of every round's Deltas,
        thresholds and decisions.
    """
    if (insert_fn is None) == (insert_batch is None):
        raise ValueError("adapt_sequence: give exactly one of insert_fn and insert_batch")
    insert_batch = insert_batch or one_by_one(insert_fn)
    cfg = cfg or AdaptiveConfig()
    images, conversions = _uniform_rgb(list(images))
    frames, note = initial_frames(images, steps, scorer)
    size = frames[0].image.size if frames else None
    rounds = []
    stop = "max_rounds reached"
    if len(frames) < 2:
        stop = "fewer than two frames: nothing to compare"
    for r in range(1, cfg.max_rounds + 1 if len(frames) >= 2 else 1):
        frames, entry = run_round(frames, scorer, insert_batch, cfg, r, size)
        rounds.append(entry)
        if not any(d["applied"] for d in entry["decisions"]):
            stop = "converged: no edit applied"
            break
    report = {
        "config": asdict(cfg),
        "sem_dropped": note is not None,
        "note": note
        or "Delta_sem from the step texts (inserted frames: interpolated text embeddings of their neighbours)",
        "rounds": rounds,
        "stopped": stop,
        "input_frames": len(images),
        "input_conversions": conversions,
        "final_frames": [{"label": f.label, "text": f.text, **f.origin} for f in frames],
    }
    return AdaptiveResult(frames, report)
