"""ProcessDataModule: streams serpentine-grid shards with webdataset into batch dicts.

Pipeline per DataLoader worker (see docs/DATA.md):
shard list (ordered, shuffled or resampled) -> tar samples -> metadata check -> optional domain balancing ->
finite streams: this rank and worker's slice of the samples, padded to equal length (`data/rank_slice.py`) ->
shuffle buffer (still PNG bytes, kept across epochs by persistent workers: `data/epoch_shuffle.py`) ->
PNG decode + per-cell resize -> uint8 batches in the contract of docs/ARCHITECTURE.md; `on_after_batch_transfer`
makes their pixels float [-1, 1] on the device (`data/pixels.py`).
"""

from __future__ import annotations

from collections import Counter

import lightning as L
from torch.utils.data import DataLoader

from pm_lightning.core.validate import NonNegativeInt, PositiveInt, Seed, Side
from pm_lightning.data.pixels import float_pixels
from pm_lightning.data.shard_writer import expand_shards, shard_indexes, shard_sample_counts
from pm_lightning.data.skip_counter import SKIP_REASONS, CorruptSampleWarning, SkipCounter
from pm_lightning.data.stream import (
    TOKEN_PX,
    EpochLoader,
    ResolutionError,
    ShardStream,
    StreamConfig,
    check_resolution,
    valid_resolution,
)

__all__ = [
    "ProcessDataModule",
    "CorruptSampleWarning",
    "ResolutionError",
    "TOKEN_PX",
    "expand_shards",
    "valid_resolution",
]


# ------------------------------------------------------------------------------- datamodule


class ProcessDataModule(L.LightningDataModule):
    """Serpentine-grid sequences from WebDataset shards (see docs/DATA.md).

    Args:
        train_shards: shard spec(s): file paths, a directory (all its `*.tar`), globs,
            brace patterns (`shard-{000000..000009}.tar`) or webdataset URLs (`pipe:...`, http(s)).
        val_shards: the same for validation (finite, unshuffled, deterministic order), or None.
        domains: the configured domain list (index = position, others -> UNSEEN_DOMAIN);
            None = the sorted domain names of the training shards' index.json.
        resolution: grid side in px; every grid is resized (cell by cell) to resolution x resolution.
            Must be a multiple of 16 * rows and 16 * cols (e.g. 192 for 3x3, 1056 for 2x2 and 3x3).
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (finite streams: samples are split between ranks and workers
            round-robin, whatever the shard count; resampled: each worker draws its own shards).
        shuffle_buffer: samples held for shuffling (0 or 1 = no shuffling).
        resampled: draw training shards with replacement forever (`wds.ResampledShards`),
            cut into epochs of `samples_per_epoch`; use it for DDP so every rank gets equal batches.
        samples_per_epoch: samples per training epoch (all ranks together) when `resampled`;
            None = the total in the shards' index.json.
        balance_domains: keep each sample with probability min_count / count_domain, counts from
            index.json beside the shards (or estimated while streaming): a roughly uniform domain mix.
        seed: seeds shard order, shuffling and balancing (per epoch, rank and worker).
        val_batch_size: validation batch size (None = batch_size).
        pin_memory: pin batches in page-locked memory (GPU training).
    """

    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        domains: list[str] | None = None,
        resolution: Side = 192,
        batch_size: PositiveInt = 8,
        num_workers: NonNegativeInt = 2,
        shuffle_buffer: NonNegativeInt = 256,
        resampled: bool = False,
        samples_per_epoch: PositiveInt | None = None,
        balance_domains: bool = False,
        seed: Seed = 0,
        val_batch_size: PositiveInt | None = None,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        for name in ("resolution", "batch_size"):
            if getattr(self.hparams, name) < 1:
                raise ValueError(f"ProcessDataModule: {name} must be >= 1, got {getattr(self.hparams, name)}")
        if num_workers < 0 or shuffle_buffer < 0:
            raise ValueError("ProcessDataModule: num_workers and shuffle_buffer must be >= 0")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"ProcessDataModule: samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.domains = list(domains) if domains is not None else None
        self.counter: SkipCounter | None = None
        self.val_domains: list[str] = []

    @property
    def skipped(self) -> dict[str, int]:
        """Corrupt samples skipped so far, by reason (summed over all workers)."""
        return self.counter.as_dict() if self.counter else dict.fromkeys(SKIP_REASONS, 0)

    def setup(self, stage: str | None = None) -> None:
        """Expand shard specs, read index.json, resolve domains, check resolution early."""
        hp = self.hparams
        self.train_urls = expand_shards(hp.train_shards)
        self.val_urls = expand_shards(hp.val_shards) if hp.val_shards else []
        self.train_index = _merge_indexes(shard_indexes(self.train_urls))
        if self.domains is None:
            if self.train_index is None:
                raise ValueError("ProcessDataModule: give `domains` (no index.json beside the training shards)")
            self.domains = sorted(self.train_index["domains"])
        val_index = _merge_indexes(shard_indexes(self.val_urls)) if self.val_urls else None
        # validation domains by name (held-out ones included): per-domain validation loss
        self.val_domains = sorted(val_index["domains"]) if val_index else []
        for index in filter(None, (self.train_index, val_index)):
            for layout in index["layouts"]:
                rows, cols = (int(n) for n in layout.split("x"))
                check_resolution(hp.resolution, rows, cols, where=" (from index.json)")
        if self.counter is None:
            self.counter = SkipCounter()

    def _stream(self, urls: list[str], train: bool) -> ShardStream:
        """A ShardStream for the train or validation split."""
        hp = self.hparams
        balance_on = train and hp.balance_domains
        cfg = StreamConfig(
            urls=urls,
            domains=list(self.domains),
            resolution=hp.resolution,
            batch_size=hp.batch_size if train else (hp.val_batch_size or hp.batch_size),
            num_workers=hp.num_workers,
            shuffle_buffer=hp.shuffle_buffer if train else 0,
            resampled=train and hp.resampled,
            samples_per_epoch=self._samples_per_epoch() if train and hp.resampled else None,
            balance=balance_on,
            domain_counts=self.train_index["domains"] if balance_on and self.train_index else None,
            seed=hp.seed,
            shard_samples=None if train and hp.resampled else shard_sample_counts(urls),
        )
        return ShardStream(cfg, self.counter)

    def _samples_per_epoch(self) -> int:
        """Epoch size of a resampled stream."""
        if self.hparams.samples_per_epoch:
            return self.hparams.samples_per_epoch
        if self.train_index is None:
            raise ValueError(
                "ProcessDataModule: resampled=True needs samples_per_epoch (no index.json beside the shards)"
            )
        return self.train_index["total"]

    def _loader(self, stream: ShardStream) -> DataLoader:
        """Batches are formed inside the stream, so the loader only parallelises it."""
        return self._make_loader(stream, self.hparams.num_workers, persistent=True)

    def _make_loader(self, stream: ShardStream, workers: int, persistent: bool = False) -> DataLoader:
        """Workers read each pass's epoch and resume skip from the stream's shared memory; persistent ones (training)
        keep the shuffle buffer and skip the start-up of fresh processes at every epoch."""
        return EpochLoader(
            stream,
            batch_size=None,
            collate_fn=_as_is,  # batches are complete; skip torch's default_convert walk
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            prefetch_factor=4 if workers else None,
            persistent_workers=persistent and workers > 0,
        )

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """uint8 pixels -> float [-1, 1], on the device the batch was moved to (`data/pixels.py`)."""
        return float_pixels(batch)

    def train_dataloader(self) -> DataLoader:
        """Shuffled (optionally resampled and balanced) training batches."""
        if not hasattr(self, "train_urls"):
            self.setup("fit")
        return self._loader(self._stream(self.train_urls, train=True))

    def val_dataloader(self) -> DataLoader | list:
        """Finite, unshuffled validation batches in a deterministic order ([] when no val_shards): every rank reads
        every validation shard and gets its slice, padded to the same number of batches (`batch["valid"]` False)."""
        if not hasattr(self, "train_urls"):
            self.setup("validate")
        if not self.val_urls:
            return []
        return self._make_loader(self._stream(self.val_urls, train=False), self.hparams.num_workers)


def _as_is(batch: dict) -> dict:
    """Identity collate_fn (module level so spawned workers can pickle it)."""
    return batch


def _merge_indexes(indexes: list[dict] | None) -> dict | None:
    """Sum totals, domain and layout counts over several shard directories' index.json."""
    if not indexes:
        return None
    merged = {"total": 0, "domains": Counter(), "layouts": Counter()}
    for index in indexes:
        merged["total"] += int(index.get("total", 0))
        merged["domains"].update(index.get("domains", {}))
        merged["layouts"].update(index.get("layouts", {}))
    merged["domains"], merged["layouts"] = dict(merged["domains"]), dict(merged["layouts"])
    return merged
