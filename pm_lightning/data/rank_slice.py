"""Finite streams on any number of shards, ranks and DataLoader workers: every rank yields the same number of batches.

Splitting shards between ranks (webdataset's `split_by_node`) leaves a rank nothing when there are fewer shards than
ranks (the default validation set is one shard), and unequal shards give ranks unequal batch counts, which hangs
DDP / FSDP2 collectives. Instead every (rank, worker) "slot" reads every shard in the same order and keeps every
`slots`-th sample (round-robin, as torch's DistributedSampler does for map-style datasets), then pads its slice to
ceil(n / slots) items, so all slots, hence all ranks, yield the same number of batches. Each kept sample carries its
position in the whole stream (`index`) and `valid=True`; padding items are copies of the stream's first sample with
`valid=False` and `index=-1`. Validation masks them out of its metrics and keys its noise by `index`, so the logged
figures do not depend on the rank count; training uses them as DistributedSampler uses its repeats.

The cost: every slot reads (not decodes) every shard's bytes. Large training sets should use `resampled: true`,
which draws shards per rank and worker instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import webdataset as wds


def slot_of() -> tuple[int, int]:
    """(this process's slot, number of slots): slot = rank * workers + worker."""
    rank, world, worker, workers = wds.utils.pytorch_worker_info()
    return rank * workers + worker, world * workers


def padded_length(total: int, slots: int) -> int:
    """Items every slot yields: ceil(total / slots)."""
    return -(-total // slots)


def take_slice(src: Iterator[dict], slot: int, slots: int, pad: bool = True) -> Iterator[dict]:
    """The same sample sequence on every slot -> this slot's samples (i % slots == slot), tagged with `index` and
    `valid`, then (with `pad`) padding (copies of the first sample, `valid=False`) up to ceil(n / slots) items."""
    first, mine, total = None, 0, 0
    for i, sample in enumerate(src):
        total = i + 1
        first = sample if first is None else first
        if i % slots == slot:
            mine += 1
            yield dict(sample, index=i, valid=True)
    for _ in range(padded_length(total, slots) - mine if pad else 0):
        yield dict(first, index=-1, valid=False)
