"""The change-metric loss that can be added to the tiny evaluators' training (`TinyEvalConfig.change_weight`,
shipped at 0: docs/ADAPTIVE.md has what it did): pair distances that follow the ground-truth amount of change."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pm_lightning.data.near_duplicates import near_duplicate
from pm_lightning.data.synthetic_corpus import Sequence
from pm_lightning.inference.adaptive_rule import batched_chamfer


@dataclass
class ChangeData:
    """What the change-metric loss needs: where each sequence's frames lie in the frame tensor, its ground-truth
    change counts, and one near-duplicate (JPEG round trip) of one of its frames."""

    offsets: list[int]
    changes: list[list[int]]
    dup_frame: list[int]  # index into the frame tensor
    dups: torch.Tensor  # (S, 3, 64, 64) fp16


def change_data(seqs: list[Sequence], preprocess, seed: int) -> ChangeData:
    rng, offsets, dup_frame, dups, at = random.Random(seed), [], [], [], 0
    for seq in seqs:
        offsets.append(at)
        k = rng.randrange(len(seq.frames))
        dup_frame.append(at + k)
        dups.append(preprocess(near_duplicate(seq.frames[k])))
        at += len(seq.frames)
    return ChangeData(offsets, [s.changes for s in seqs], dup_frame, torch.stack(dups).half())


def image_and_patches(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised image embeddings (N, D), L2-normalised patch tokens (N, P, W)): one pass of the visual tower,
    the tokens being what `dino="tiny"` scores (models/encoders.py)."""
    visual = model.visual
    pooled, tokens = visual._pool(visual.transformer(visual._embeds(images)))
    return F.normalize(pooled @ visual.proj, dim=-1), F.normalize(tokens, dim=-1)


def _pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x - x.mean(), y - y.mean()
    return (x * y).sum() / (x.norm() * y.norm() + 1e-8)


def change_loss(model, frames: torch.Tensor, data: ChangeData, picks: list[int]) -> torch.Tensor:
    """Make Delta_glob and Delta_loc measure change: within each picked sequence, every frame pair's distance
    correlates (Pearson) with log(1 + ground-truth change), and a near-duplicate sits closer to its frame than
    any true step (its distance over the sequence's smallest step distance is pushed below 1/4, bounded)."""
    loss = frames.new_zeros((), dtype=torch.float32)
    for s in picks:
        n = len(data.changes[s])
        images = torch.cat([frames[data.offsets[s] : data.offsets[s] + n], data.dups[s : s + 1]]).float()
        v, p = image_and_patches(model, images)  # (n+1, D), (n+1, P, W)
        i, j = torch.triu_indices(n, n, 1)
        target = torch.log1p(
            torch.tensor([float(sum(data.changes[s][a + 1 : b + 1])) for a, b in zip(i.tolist(), j.tolist())])
        )
        glob = 1 - (v[i] * v[j]).sum(-1)
        loc = batched_chamfer(p[i], p[j])
        k = data.dup_frame[s] - data.offsets[s]
        dup_glob, dup_loc = 1 - (v[k] * v[n]).sum(), batched_chamfer(p[k : k + 1], p[n : n + 1])[0]
        step = (j - i) == 1
        for dist, dup in ((glob, dup_glob), (loc, dup_loc)):
            ratio = dup / (dist[step].min().detach() + 1e-6)  # a repeat should sit far below the smallest true step
            loss = loss + (1 - _pearson(dist, target)) + (ratio - 0.25).clamp(min=0, max=4)
    return loss / max(len(picks), 1)
