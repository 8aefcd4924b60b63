"""A shuffle buffer that persists across epochs: no worker stalls refilling it at an epoch start.

A plain shuffle buffer of n samples (webdataset's `shuffle(n, initial=n)`) reads n samples before it yields the
first, at every epoch start, in every DataLoader worker; on a finite stream sliced between ranks and workers
(`data/rank_slice.py`) those n samples cost n x slots samples read. Here the buffer lives as long as the worker
(persistent DataLoader workers, or the main process with 0 workers): while it drains the end of epoch e it already
reads the first samples of epoch e+1, one per sample it yields, so epoch e+1 starts with a full buffer.

Every epoch still yields each of its samples exactly once (the drain yields only epoch e's samples), and the
buffer epoch e+1 starts from is its first n samples in reading order, exactly what a fresh buffer would read: the
order is a function of (seed, epoch, slot) only, so a run resumed at any epoch sees the batches a straight run
would. The buffer holds PNG bytes, not decoded grids.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from pm_lightning.data.skip_counter import SkipCounter


@dataclass
class Pass:
    """One epoch's samples from the shards, with what `ShardStream` counts while reading them."""

    epoch: int
    samples: Iterator[dict]
    given: list[str] = field(default_factory=list)  # shard URLs this pass was given
    per_shard: Counter = field(default_factory=Counter)  # samples read per shard
    counter: SkipCounter | None = None  # what its stages count skips with
    begin: Callable[[], None] = lambda: None  # called when its epoch starts (a pass read ahead holds its skip counts)


class EpochShuffle:
    """Shuffle buffer of `size` samples kept across epochs; `open` then `shuffle` once per epoch."""

    def __init__(self, size: int):
        self.size = size
        self._ready: tuple[Pass, list[dict]] | None = None  # the next epoch's pass and its first samples

    def open(self, epoch: int, make_pass: Callable[[int], Pass]) -> tuple[Pass, list[dict]]:
        """Epoch `epoch`'s pass and its full buffer: the one read ahead during the last drain if it is this
        epoch's, else read now."""
        ready, self._ready = self._ready, None
        run, buf = ready if ready is not None and ready[0].epoch == epoch else (make_pass(epoch), [])
        run.begin()
        buf.extend(islice(run.samples, self.size - len(buf)))
        return run, buf

    def shuffle(
        self, run: Pass, buf: list[dict], make_pass: Callable[[int], Pass], rng: random.Random
    ) -> Iterator[dict]:
        """Every sample of `run` once, in buffer-random order; the drain reads the next epoch's first samples."""
        for sample in run.samples:
            i = rng.randrange(len(buf))
            buf[i], sample = sample, buf[i]
            yield sample
        upcoming, ahead = None, []
        while buf:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
            if upcoming is None:
                upcoming = make_pass(run.epoch + 1)
            ahead.extend(islice(upcoming.samples, 1 if len(ahead) < self.size else 0))
        if upcoming is not None:
            self._ready = (upcoming, ahead)
