"""The grids of a shard set, each named by its content: what the VAE latent cache is keyed on.

A grid's id is the SHA-256 of its PNG member's bytes (`data/grid.py`), so the same grid in two shard sets (train / val, a
re-sharded copy) has one id, and a grid that changed is a new id (never a stale latent). The stream puts the id of
every sample in its batch (`batch["grid_id"]`, `data/stream.py`).
"""

from __future__ import annotations

import itertools
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pm_lightning.data.grid import grid_id
from pm_lightning.data.shard_writer import expand_shards
from pm_lightning.data.stream import decode_grid, layout_problem


@dataclass
class ShardGrid:
    """One grid of a shard set, decoded as training decodes it."""

    key: str
    url: str
    grid_id: str
    pixels: np.ndarray
    """(resolution, resolution, 3) uint8, each cell resized on its own (`stream.decode_grid`)."""


def shard_grids(
    shards: Iterable[str], resolution: int, skip: set[str] | frozenset = frozenset()
) -> Iterator[ShardGrid]:
    """Every grid of the shard specs at `resolution` (tar order); ids in `skip` are not decoded. Members the
    training stream would skip (no metadata, unreadable) are skipped here too."""
    for url in itertools.chain.from_iterable(expand_shards(s) for s in shards):
        with tarfile.open(url) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, _, part = member.name.partition(".")
                if part in ("grid.png", "json") and member.isfile():
                    members.setdefault(key, {})[part] = tar.extractfile(member).read()
        for key, parts in members.items():
            if set(parts) != {"grid.png", "json"}:
                continue
            gid = grid_id(parts["grid.png"])
            if gid in skip:
                continue
            try:
                meta = json.loads(parts["json"])
                rows, cols = int(meta["rows"]), int(meta["cols"])
                steps = [str(s) for s in meta.get("steps") or []]
            except (ValueError, KeyError, TypeError, OverflowError):
                continue
            if layout_problem(rows, cols, steps, resolution):
                continue
            yield ShardGrid(key, url, gid, decode_grid(parts["grid.png"], rows, cols, resolution))
