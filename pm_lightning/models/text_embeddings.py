"""The captions a training run encodes, precomputed once into the text embedding cache (`text_embedding_cache.py`).

What a run encodes: each shard sample's caption (stage 1, ReCraft, stage 2), with stage 2's `step_text` also the caption + ", between: <step b>; <step c>" for
every pair b < c of the sequence's steps, and the sample prompts of `SampleGrids` (from the experiment config).
"""

from __future__ import annotations

import itertools
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

import torch

from pm_lightning.core.config_files import load_config
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


def config_prompts(path: str | Path) -> list[str]:
    """Sample prompts: an experiment config's `SampleGrids` / `EvaluationCallback` captions, or a text file (one
    prompt per line)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    config = load_config(path)
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    prompts = [p for cb in callbacks for p in (cb.get("init_args") or {}).get("prompts") or []]
    return sorted({p["caption"] for p in prompts})


def config_shards(path: str | Path) -> list[str]:
    """The training and validation shard specs of an experiment config (`data.train_shards` / `val_shards`)."""
    data = load_config(path).get("data") or {}
    found = [data.get("train_shards"), data.get("val_shards")]
    return [s for spec in found if spec for s in ([spec] if isinstance(spec, str) else spec)]


def precompute(backbone, captions: list[str], batch_size: int = 16) -> tuple[int, int]:
    """Encode the captions not yet in `backbone.text_cache` (batches of `batch_size`); (written, already there)."""
    todo = [c for c in captions if not backbone.text_cache.path(c).is_file()]
    with torch.no_grad():
        for i in range(0, len(todo), batch_size):
            backbone.encode_text(todo[i : i + batch_size])  # encodes the missing ones and writes them
    return len(todo), len(captions) - len(todo)
