"""The shard stream behind ProcessDataModule: decoding stages, skip counters, the resumable loader.

Samples flow: shard URLs -> tar members -> parsed metadata (layout checked per member) ->
optional domain balancing -> a finite stream's slice for this rank and worker (`data/rank_slice.py`) ->
shuffle buffer (kept across epochs: `data/epoch_shuffle.py`) -> decoded uint8 grids -> batches (the module converts
them to [-1, 1] on its device: `data/pixels.py`). Corrupt members (unreadable, or well-formed with an
impossible layout) are counted by reason and warned about with their shard and key, never raised.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from pm_lightning.data.domains import domain_index
from pm_lightning.data.epoch_shuffle import EpochShuffle, Pass
from pm_lightning.data.grid import frames_to_grid, grid_id, grid_to_frames
from pm_lightning.data.rank_slice import slot_of, take_slice
from pm_lightning.data.skip_counter import EmptyStream, HeldCounter, QuietCounter, SkipCounter

TOKEN_PX = 16  # one Flux latent token covers 16 x 16 px (VAE /8, 2x2 packing)
MAX_CELLS = 16  # rows or cols of a grid above this are absurd (ProcessMaker: 2x2 and 3x3)


class ResolutionError(ValueError):
    """`resolution` does not put grid cells on Flux's 16-px token boundaries."""


# ------------------------------------------------------------------------------- resolution


def valid_resolution(resolution: int, layouts: list[tuple[int, int]]) -> int:
    """The multiple of every layout's 16-px cell step nearest to `resolution`."""
    step = math.lcm(*(TOKEN_PX * n for rc in layouts for n in rc))
    return max(step, round(resolution / step) * step)


def check_resolution(resolution: int, rows: int, cols: int, where: str = "") -> None:
    """Raise ResolutionError unless resolution/rows and resolution/cols are multiples of 16 px."""
    if not (1 <= rows <= MAX_CELLS and 1 <= cols <= MAX_CELLS):
        raise ResolutionError(f"a {rows}x{cols} grid{where}: rows and cols must each be 1..{MAX_CELLS}")
    if resolution % (TOKEN_PX * rows) == 0 and resolution % (TOKEN_PX * cols) == 0:
        return
    fix = valid_resolution(resolution, [(rows, cols)])
    both = valid_resolution(resolution, [(rows, cols), (2, 2), (3, 3)])
    raise ResolutionError(
        f"resolution={resolution} splits a {rows}x{cols} grid{where} into cells that are not multiples of "
        f"{TOKEN_PX} px (Flux tokens); use resolution={fix} (or {both} for 2x2 and 3x3 grids alike)"
    )


def layout_problem(rows: int, cols: int, steps: list[str], resolution: int) -> str | None:
    """Why a member's metadata cannot be a training grid at `resolution` (None when it can): rows / cols out of
    1..MAX_CELLS, a layout that does not split the resolution into 16-px cells, step texts that are not one per
    frame."""
    if not (1 <= rows <= MAX_CELLS and 1 <= cols <= MAX_CELLS):
        return f"rows={rows}, cols={cols}: each must be 1..{MAX_CELLS}"
    if resolution % (TOKEN_PX * rows) or resolution % (TOKEN_PX * cols):
        return f"a {rows}x{cols} grid does not split resolution={resolution} into cells of whole {TOKEN_PX}-px tokens"
    if steps and len(steps) != rows * cols:
        return f"{len(steps)} step texts for a {rows}x{cols} grid of {rows * cols} frames"
    return None


# ----------------------------------------------------------------------------------- stages


def parse_meta(src: Iterator[dict], counter: SkipCounter, resolution: int) -> Iterator[dict]:
    """Keep samples with both parts and valid JSON metadata; check the resolution per layout."""
    for sample in src:
        counter.sample_read()
        url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
        missing = [part for part in ("grid.png", "json") if part not in sample]
        if missing:
            counter.add("missing_part", url, key, f"no {' or '.join(missing)} member")
            continue
        try:
            meta = json.loads(sample["json"])
            rows, cols = int(meta["rows"]), int(meta["cols"])
            caption, domain = str(meta["caption"]), str(meta["domain"])
            steps = [str(s) for s in meta.get("steps") or []]
        except (ValueError, KeyError, TypeError, OverflowError) as err:
            counter.add("bad_json", url, key, repr(err))
            continue
        if problem := layout_problem(rows, cols, steps, resolution):
            counter.add("bad_layout", url, key, problem)
            continue
        yield dict(
            key=key, url=url, png=sample["grid.png"], rows=rows, cols=cols, caption=caption, domain=domain, steps=steps
        )


def balance(src: Iterator[dict], counts: dict[str, int] | None, rng: random.Random) -> Iterator[dict]:
    """Keep a sample of domain d with probability min_count / count_d (online counts if none given)."""
    seen: Counter = Counter()
    for sample in src:
        table = counts if counts else seen
        if not counts:
            seen[sample["domain"]] += 1
        n = table.get(sample["domain"], 0)
        if n == 0 or rng.random() < min(table.values()) / n:
            yield sample


def decode(
    src: Iterator[dict], counter: SkipCounter, resolution: int, domains: list[str], keep_slots: bool = False
) -> Iterator[dict]:
    """PNG bytes -> (H, W, 3) uint8 array at resolution x resolution and the PNG's grid id (hashed here, after the
    slice and the shuffle: only this slot's samples); corrupt PNGs are skipped. With `keep_slots`
    (a rank's slice of a finite stream, `data/rank_slice.py`) a corrupt PNG is replaced by the last good sample marked
    `valid=False` (black pixels before any), so every rank still yields the same number of items."""
    last = None
    for s in src:
        try:
            pixels = decode_grid(s["png"], s["rows"], s["cols"], resolution)
        except Exception as err:  # any decoder failure is a corrupt member, never a crash
            if s.get("valid", True):  # padding copies are not counted again
                counter.add("bad_png", s["url"], s["key"], repr(err)[:300])
            if keep_slots:
                black = np.zeros((resolution, resolution, 3), np.uint8)  # (H, W, 3)
                domain = domain_index(s["domain"], domains)
                stand_in = last or dict(s, pixels=black, grid_id=grid_id(s["png"]), domain_index=domain)
                yield {k: v for k, v in stand_in.items() if k != "png"} | {"index": -1, "valid": False}
            continue
        png = s.pop("png")
        last = dict(s, pixels=pixels, grid_id=grid_id(png), domain_index=domain_index(s["domain"], domains))
        yield last


def decode_grid(png: bytes, rows: int, cols: int, resolution: int) -> torch.Tensor:
    """(resolution, resolution, 3) uint8 array; each cell is resized on its own so nothing bleeds across cells."""
    img = Image.open(io.BytesIO(png))
    img = img.convert("RGB") if img.mode != "RGB" else img
    if img.size != (resolution, resolution):
        cell = resolution // cols, resolution // rows
        img = frames_to_grid(
            [f.resize(cell, Image.Resampling.BICUBIC) for f in grid_to_frames(img, rows, cols)], rows, cols
        )
    return np.asarray(img)  # (H, W, 3) uint8


def collate(samples: list[dict]) -> dict:
    """Samples -> the batch dict of docs/ARCHITECTURE.md, pixels uint8 (`data/pixels.py` makes them [-1, 1])."""
    return {
        "pixels": torch.from_numpy(np.stack([s["pixels"] for s in samples])),  # (B, H, W, 3) uint8
        "caption": [s["caption"] for s in samples],
        "steps": [s["steps"] for s in samples],
        "domain": torch.tensor([s["domain_index"] for s in samples], dtype=torch.long),
        "domain_name": [s["domain"] for s in samples],
        "rows": torch.tensor([s["rows"] for s in samples], dtype=torch.long),
        "cols": torch.tensor([s["cols"] for s in samples], dtype=torch.long),
        "key": [s["key"] for s in samples],
        "url": [s["url"] for s in samples],
        "grid_id": [s["grid_id"] for s in samples],  # sha256 of the PNG: the latent cache's key
        "index": torch.tensor([s.get("index", -1) for s in samples], dtype=torch.long),  # position in a finite stream
        "valid": torch.tensor([s.get("valid", True) for s in samples], dtype=torch.bool),  # False: rank padding
    }


# ----------------------------------------------------------------------------------- stream


@dataclass
class StreamConfig:
    """Everything one ShardStream needs (picklable, sent to DataLoader workers)."""

    urls: list[str]
    domains: list[str]
    resolution: int
    batch_size: int
    num_workers: int = 0
    shuffle_buffer: int = 0
    resampled: bool = False
    samples_per_epoch: int | None = None
    balance: bool = False
    domain_counts: dict[str, int] | None = None
    seed: int = 0
    shard_samples: dict[str, int] | None = None  # absolute shard path -> samples in it (index.json), finite streams


def count_per_shard(src: Iterator[dict], counts: Counter) -> Iterator[dict]:
    """Count the samples that come out of each shard (before any is judged)."""
    for sample in src:
        counts[sample.get("__url__", "?")] += 1
        yield sample


def record_urls(src: Iterator[dict], urls: list[str]) -> Iterator[dict]:
    """Remember which shards this worker was given."""
    for item in src:
        urls.append(item["url"])
        yield item


class ShardStream(IterableDataset):
    """Batches from shards, seeded by (seed, epoch, rank, worker).

    `epoch` and `skip_batches` are set by EpochLoader in the main process before each pass and live in shared
    memory, so persistent DataLoader workers read the current values at every pass. `skip_batches` (a resumed
    pass) makes every worker drop its first batches before decoding them. A finite stream's shuffle buffer
    (`data/epoch_shuffle.py`) lives as long as the worker and is refilled while the previous epoch drains.
    """

    def __init__(self, cfg: StreamConfig, counter: SkipCounter):
        super().__init__()
        self.cfg, self.counter = cfg, counter
        self._pass_state = mp.Array("q", 2, lock=False)  # (epoch, skip_batches), shared with the workers
        self._buffer = EpochShuffle(cfg.shuffle_buffer) if cfg.shuffle_buffer > 1 and not cfg.resampled else None

    epoch = property(lambda self: self._pass_state[0], lambda self, v: self._pass_state.__setitem__(0, v))
    skip_batches = property(lambda self: self._pass_state[1], lambda self, v: self._pass_state.__setitem__(1, v))

    def __iter__(self) -> Iterator[dict]:
        cfg, epoch, skip = self.cfg, self.epoch, self.skip_batches
        rank, world, worker, _ = wds.utils.pytorch_worker_info()
        seed = wds.utils.make_seed(cfg.seed, epoch, rank, worker)
        pad = (
            not cfg.resampled and world > 1
        )  # equal lengths matter across ranks only (one rank's loader takes uneven workers)
        counter = self.counter if worker == 0 or cfg.resampled else QuietCounter(self.counter.max_failures_in_a_row)
        make_pass = partial(self._pass, counter=counter)
        if self._buffer is not None:  # finite: kept across epochs, the next one read while this one drains
            run, buf = self._buffer.open(epoch, make_pass)
            samples = self._buffer.shuffle(run, buf, make_pass, random.Random(seed))
        else:  # resampled (refilled per epoch) or unshuffled
            run = make_pass(epoch)
            run.begin()
            samples = run.samples
            if cfg.shuffle_buffer > 1:
                samples = wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, seed=seed)(samples)
        if skip:  # whole rounds of the loader's round-robin over workers: each skips as many
            samples = islice(samples, skip * cfg.batch_size, None)
        decoded = decode(samples, self.counter, cfg.resolution, cfg.domains, keep_slots=pad)
        batches = wds.batched(cfg.batch_size, collation_fn=collate, partial=True)(decoded)
        if cfg.resampled:
            return islice(batches, self._per_worker_batches() - skip)
        return self._then_count_lost(batches, run)

    def _pass(self, epoch: int, counter: SkipCounter) -> Pass:
        """One epoch's samples, before shuffling: shards -> tar members -> checked metadata -> (balanced) -> a finite
        stream's slice for this rank and worker (every slot reads every shard: `data/rank_slice.py`). Its skip counts
        are held until its epoch begins (`Pass.begin`): a pass read ahead counts in its own epoch."""
        cfg, sliced = self.cfg, not self.cfg.resampled
        slot, slots = slot_of()
        rank, world, worker, _ = wds.utils.pytorch_worker_info()
        counter = HeldCounter(counter)
        run = Pass(epoch, iter(()), counter=counter, begin=counter.release)
        stages = [
            *self._shard_stages(epoch),
            lambda src: record_urls(src, run.given),
            wds.tarfile_to_samples(handler=counter.shard_error),
            lambda src: count_per_shard(src, run.per_shard),
            lambda src: parse_meta(src, counter, cfg.resolution),
        ]
        if cfg.balance:  # finite: the same choice on every slot (before slicing), so slices stay disjoint
            rng = random.Random(wds.utils.make_seed(cfg.seed, epoch, *(() if sliced else (rank, worker))))
            stages.append(lambda src: balance(src, cfg.domain_counts, rng))
        if sliced:
            stages.append(lambda src: take_slice(src, slot, slots, pad=world > 1))
        run.samples = iter(wds.DataPipeline(*stages))
        return run

    def _then_count_lost(self, batches: Iterator[dict], run: Pass) -> Iterator[dict]:
        """A finite pass, then: samples index.json promised that no shard gave are counted as "lost" by shard."""
        yield from batches
        for url in run.given:
            expected = (self.cfg.shard_samples or {}).get(os.path.abspath(url))
            if expected is not None and run.per_shard[url] < expected:
                missing = expected - run.per_shard[url]
                run.counter.add("lost", url, "", f"{missing} of its {expected} samples could not be read", n=missing)

    def _shard_stages(self, epoch: int) -> list:
        """Shard URL source: resampled (infinite, drawn per rank and worker) or the ordered list, the same on every
        rank and worker (each keeps its slice of the samples: `take_slice`)."""
        cfg, epoch_seed = self.cfg, wds.utils.make_seed(self.cfg.seed, epoch)
        if cfg.resampled:  # every worker draws its own shards; seeded per worker and epoch
            return [wds.ResampledShards(cfg.urls, seed=epoch_seed, deterministic=True)]
        order_seed = epoch_seed if cfg.shuffle_buffer > 1 else None  # same permutation on every rank
        return [wds.SimpleShardList(cfg.urls, seed=order_seed)]

    def _per_worker_batches(self) -> int:
        """Batches each worker yields per epoch so all ranks and workers add up to samples_per_epoch."""
        _, world, _, _ = wds.utils.pytorch_worker_info()
        return math.ceil(self.cfg.samples_per_epoch / (world * max(1, self.cfg.num_workers) * self.cfg.batch_size))

    def __len__(self) -> int:
        """Batches per epoch on this rank (resampled streams only)."""
        if not self.cfg.resampled:
            raise TypeError("a non-resampled shard stream has no known length")
        return self._per_worker_batches() * max(1, self.cfg.num_workers)


class EpochLoader(DataLoader):
    """DataLoader that numbers its passes (epochs) and can resume in the middle of one.

    Stateful in Lightning's sense (`state_dict` / `load_state_dict`): a checkpoint records the epoch
    and how many batches of it were consumed; after loading, the next pass re-runs that epoch's
    seeded stream and skips those batches, so a resumed run sees exactly the batches a straight run
    would. Lightning does not pre-fetch from loaders with a length, so with `resampled=True` the
    count is exact; a finite (non-resampled) stream is pre-fetched one batch ahead, so resume at an
    epoch boundary there.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch, self.consumed, self._resume_skip = -1, 0, 0

    def __iter__(self):
        if self._resume_skip:
            skip, self._resume_skip = self._resume_skip, 0
        else:
            self.epoch, skip = self.epoch + 1, 0
        # workers skip whole rounds of the round-robin (cheap, before decoding); the rest is dropped here
        rounds = skip // max(1, self.num_workers)
        self.dataset.epoch, self.dataset.skip_batches = self.epoch, rounds
        self.consumed = rounds * max(1, self.num_workers)
        for batch in super().__iter__():
            self.consumed += 1
            if self.consumed > skip:
                yield batch
        if self.consumed == 0 and skip == 0:  # a whole pass and not one batch: stop instead of spinning
            raise EmptyStream(
                f"epoch {self.epoch} of the shards yielded no batch (skipped so far: {self.dataset.counter.as_dict()}); "
                "check the shard paths and files"
            )

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        """Resume inside epoch `state["epoch"]`, or start the next one if it had been finished."""
        epoch, consumed = state["epoch"], state["consumed"]
        if _has_len(self) and consumed >= len(self):
            self.epoch, self._resume_skip = epoch, 0  # finished: the next pass is epoch + 1
        elif consumed == 0:
            self.epoch, self._resume_skip = epoch - 1, 0  # not started: the next pass is this epoch
        else:
            self.epoch, self._resume_skip = epoch, consumed


def _has_len(loader: DataLoader) -> bool:
    try:
        len(loader)
        return True
    except TypeError:
        return False
