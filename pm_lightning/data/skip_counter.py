"""Skipped-sample counters of the shard stream (`data/stream.py`): counts by reason shared by a rank's DataLoader
workers, warnings naming shard and key, and the failures-in-a-row limit that stops a run reading only broken shards."""

from __future__ import annotations

import multiprocessing as mp
import warnings

# bad_shard counts events (a shard that cannot be opened or read on); the others count samples. "lost": samples a
# shard's index.json promises that never came out of it (a truncated tar, a damaged member header).
SKIP_REASONS = ("bad_shard", "missing_part", "bad_json", "bad_layout", "bad_png", "lost")


class CorruptSampleWarning(UserWarning):
    """A shard member was unreadable and its sample skipped."""


class EmptyStream(RuntimeError):
    """The shards yield no sample at all: a run would spin forever waiting for a batch."""


class SkipCounter:
    """Skipped-sample counts shared by all DataLoader workers (a multiprocessing array)."""

    def __init__(self, max_failures_in_a_row: int = 50):
        self._counts = mp.Array("q", len(SKIP_REASONS))
        self.max_failures_in_a_row = max_failures_in_a_row
        self.failures_in_a_row = 0  # per process (each DataLoader worker has its own copy): shard errors since a sample

    def add(self, reason: str, url: str, key: str, detail: str, n: int = 1) -> None:
        """Count `n` skipped samples (one by default) and warn with their shard and key."""
        with self._counts.get_lock():
            self._counts[SKIP_REASONS.index(reason)] += n
        where = f"{url} key {key!r}" if key else url
        warnings.warn(f"skipped {where} ({reason}): {detail}", CorruptSampleWarning, stacklevel=2)

    def shard_error(self, exn: Exception) -> bool:
        """webdataset handler for unreadable shards/tar members (missing, truncated, a failing `pipe:` command):
        count, warn, continue; but after `max_failures_in_a_row` errors without one good sample, stop the run."""
        url = exn.args[-1] if len(exn.args) > 1 and isinstance(exn.args[-1], str) else "?"  # webdataset appends the url
        self.add("bad_shard", url, "", repr(exn)[:300])
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= self.max_failures_in_a_row:
            raise EmptyStream(
                f"{self.failures_in_a_row} shard errors in a row and not one readable sample (the last: {url}: "
                f"{repr(exn)[:200]}); check the shard paths (data.train_shards / data.val_shards) and that the files "
                "or `pipe:` commands still work"
            )
        return True

    def sample_read(self) -> None:
        """A sample came through: the shards are not all broken."""
        self.failures_in_a_row = 0

    def as_dict(self) -> dict[str, int]:
        """Counts by reason."""
        return dict(zip(SKIP_REASONS, self._counts[:]))


class QuietCounter(SkipCounter):
    """A second reader of shards another worker of the same rank counts (`data/rank_slice.py`): keeps the
    failures-in-a-row limit, counts and warns nothing (the rank's counter is shared by its workers)."""

    def __init__(self, max_failures_in_a_row: int = 50):
        self.max_failures_in_a_row, self.failures_in_a_row = max_failures_in_a_row, 0

    def add(self, reason: str, url: str, key: str, detail: str, n: int = 1) -> None:
        pass


class HeldCounter(SkipCounter):
    """The counts of one epoch's pass, held until that epoch begins (`release`): a pass read ahead while the previous
    epoch drains (`data/epoch_shuffle.py`) counts and warns in its own epoch, and nothing if that epoch never runs."""

    def __init__(self, inner: SkipCounter):
        self.inner, self.held, self.holding = inner, [], True
        self.max_failures_in_a_row, self.failures_in_a_row = inner.max_failures_in_a_row, 0

    def add(self, reason: str, url: str, key: str, detail: str, n: int = 1) -> None:
        if self.holding:
            self.held.append((reason, url, key, detail, n))
        else:
            self.inner.add(reason, url, key, detail, n)

    def release(self) -> None:
        """The epoch begins: add what was held, count directly from now on."""
        self.holding = False
        for args in self.held:
            self.inner.add(*args)
        self.held.clear()
