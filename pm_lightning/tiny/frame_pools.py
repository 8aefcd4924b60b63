"""Pretraining data for the tiny base: single frames of the synthetic corpus with step captions, in memory."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from pm_lightning.data.synthetic_corpus import DOMAINS, Sequence, generate_sequence, sequence_seed

TRAIN_SPLIT_SEED = 0  # the corpus split seeds of `make shards`: 0 = train, 1 = validation
VAL_SPLIT_SEED = 1
# Words a user or a later stage may write that the corpus captions lack (grid captions, digits).
EXTRA_WORDS = (
    "a an the of and with in on to from how make making process sequence steps step grid frames frame "
    "showing shows picture image drawing final finished result 0 1 2 3 4 5 6 7 8 9 10 , . : ; - ( )"
)


def frame_caption(seq: Sequence, k: int) -> str:
    """Caption of frame k (0-based): the sequence caption plus its step, numbered from 1."""
    return f"{seq.caption}. step {k + 1}: {seq.steps[k]}"


def sequences(domains, split_seed: int, count: int, size: int, start: int = 0) -> list[Sequence]:
    """Sequences `start .. start+count-1` of each domain of one corpus split, rendered at `size` px."""
    return [
        generate_sequence(d, sequence_seed(split_seed, d, i), size)
        for d in domains
        for i in range(start, start + count)
    ]


def tokenizer_texts(per_domain: int = 200) -> list[str]:
    """Texts the word-level tokenizers are trained on: every domain's captions (held-out ones too:
    a real text encoder knows the words; no held-out image is ever trained on) and extra words."""
    texts = [EXTRA_WORDS]
    for seq in sequences(list(DOMAINS), TRAIN_SPLIT_SEED, per_domain, 16):
        texts.append(seq.caption)
        texts.extend(frame_caption(seq, k) for k in range(len(seq.steps)))
    return texts


@dataclass
class FramePool:
    """Frames of one canvas size: uint8 pixels (N, 3, S, S) and their captions."""

    pixels: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def to_tensor(img) -> torch.Tensor:
    """PIL RGB -> (3, H, W) uint8."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [-1, 1]."""
    return x.float() / 127.5 - 1


def frame_pool(
    size: int,
    per_domain: int,
    split_seed: int = TRAIN_SPLIT_SEED,
    domains=tuple(DOMAINS),
    final_caption_only: float = 0.15,
    seed: int = 0,
    start: int = 0,
) -> FramePool:
    """Every frame of `per_domain` sequences per domain at `size` px, captioned per step.

    Every domain by default, the held-out ones included: the base knows each domain as single
    pictures (as FLUX knows what origami looks like), never as a process (no grid, no sequence
    order; the stage-1/2 shards hold no held-out sequence).

    With probability `final_caption_only` the last frame also appears captioned with the bare
    sequence caption (what later stages write without step numbers).
    """
    rng = random.Random(seed)
    frames, captions = [], []
    for seq in sequences(domains, split_seed, per_domain, size, start):
        for k, img in enumerate(seq.frames):
            frames.append(to_tensor(img))
            captions.append(frame_caption(seq, k))
        if rng.random() < final_caption_only:
            frames.append(to_tensor(seq.frames[-1]))
            captions.append(seq.caption)
    return FramePool(torch.stack(frames), captions)


def random_crops(pool: FramePool, batch: int, crop: int, g: torch.Generator) -> torch.Tensor:
    """(batch, 3, crop, crop) uint8 random crops of random frames (VAE training)."""
    idx = torch.randint(len(pool), (batch,), generator=g)
    size = pool.pixels.shape[-1]
    ys = torch.randint(size - crop + 1, (batch,), generator=g)
    xs = torch.randint(size - crop + 1, (batch,), generator=g)
    return torch.stack([pool.pixels[i, :, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs)])
