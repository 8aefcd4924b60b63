"""The captions a training run encodes, precomputed once into the text embedding cache (`text_embedding_cache.py`).

What a run encodes: each shard sample's caption (stage 1, ReCraft, stage 2), with stage 2's `step_text` also the caption + ", between: <step b>; <step c>" for
every pair b < c of the sequence's steps, and the sample prompts of `SampleGrids` (from the experiment config).
"""

from __future__ import annotations

import itertools
import json
import tarfile
from collections.abc import Iterable

import torch

from pm_lightning.core.progress import progress_bar
from pm_lightning.data.reference_cells import stage2_caption
from pm_lightning.data.shard_writer import expand_shards


def shard_captions(shards: Iterable[str], step_text: bool = False) -> list[str]:
    """Every caption the shards give a training run (sorted, unique); `step_text`: stage 2's captions too."""
    out: set[str] = set()
    for url in itertools.chain.from_iterable(expand_shards(s) for s in shards):
        with tarfile.open(url) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(member).read())
                caption, steps = meta["caption"], meta.get("steps") or []
                out.add(caption)
                if step_text:
                    pairs = itertools.combinations(range(len(steps)), 2)
                    out.update(stage2_caption(caption, steps, pair, True) for pair in pairs)
    return sorted(out)


def precompute(backbone, captions: list[str], batch_size: int = 16) -> tuple[int, int]:
    """Encode the captions not yet in `backbone.text_cache` (batches of `batch_size`); (written, already there)."""
    todo = [c for c in captions if not backbone.text_cache.path(c).is_file()]
    with torch.no_grad():
        for i in progress_bar(range(0, len(todo), batch_size), desc="text cache", unit="batch"):
            backbone.encode_text(todo[i : i + batch_size])  # encodes the missing ones and writes them
    return len(todo), len(captions) - len(todo)
