"""Sliding-window adaptive steps (ProcessMaker stage-2 inference): bounded rounds of score -> decide -> edit.

`adapt_sequence` runs the rounds with a `Scorer` (the evaluators' features) and an `insert_fn` (stage 2's sampler),
so it is testable without models; the rule each round applies (Delta terms, thresholds, decisions) is the pure
functions of `inference/adaptive_rule.py`. Calibrate them: `python -m pm_lightning.calibrate_adaptive`
(docs/ADAPTIVE.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from pm_lightning.data.image_modes import frames_as_rgb, same_size
from pm_lightning.inference.adaptive_rule import (
    TERMS,
    AdaptiveConfig,
    combine,
    decide,
    effective_weights,
    global_delta,
    local_delta,
    semantic_delta,
    thresholds,
)

log = logging.getLogger(__name__)

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
