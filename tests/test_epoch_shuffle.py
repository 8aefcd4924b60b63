"""The shuffle buffer kept across epochs (`data/epoch_shuffle.py`) and the DataModule's workers around it."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.epoch_shuffle import EpochShuffle, Pass
from tests.conftest import TRAIN_DOMAINS

N, SIZE = 23, 8


def counting_pass(reads: Counter):
    """make_pass for a synthetic stream of N samples per epoch; `reads[epoch]` counts the samples read."""

    def make(epoch: int) -> Pass:
        def samples():
            for i in range(N):
                reads[epoch] += 1
                yield {"key": i, "epoch": epoch}

        return Pass(epoch, samples())

    return make


def run_epoch(buffer: EpochShuffle, epoch: int, make) -> list[int]:
    run, buf = buffer.open(epoch, make)
    return [s["key"] for s in buffer.shuffle(run, buf, make, random.Random(1000 + epoch))]


def test_every_sample_once_per_epoch_in_a_new_order_and_as_a_fresh_buffer_would():
    """Epochs 0..3 through one persistent buffer: each yields the N samples once, in orders that differ; each equals
    the order of a fresh buffer opened at that epoch (what a run resumed there reads). Checked red: filling the
    read-ahead in another order than reading order (`ahead[:0] = ...` for `ahead.extend(...)`) fails it."""
    reads, make = Counter(), counting_pass(Counter())
    buffer, orders = EpochShuffle(SIZE), []
    for epoch in range(4):
        orders.append(run_epoch(buffer, epoch, make))
        assert sorted(orders[-1]) == list(range(N))
        assert orders[-1] == run_epoch(EpochShuffle(SIZE), epoch, counting_pass(reads))
    assert len({tuple(o) for o in orders}) == 4


def test_the_next_epoch_is_read_while_this_one_drains():
    """When epoch 1 opens, its first SIZE samples were read during epoch 0's drain: no refill stall."""
    reads = Counter()
    make, buffer = counting_pass(reads), EpochShuffle(SIZE)
    run_epoch(buffer, 0, make)
    assert reads == {0: N, 1: SIZE}
    buffer.open(1, make)
    assert reads[1] == SIZE  # opening read nothing more
    abandoned = EpochShuffle(SIZE)
    run, buf = abandoned.open(0, make)
    next(abandoned.shuffle(run, buf, make, random.Random(0)))  # an epoch left early reads nothing ahead
    assert abandoned.open(1, make)[1] == [{"key": i, "epoch": 1} for i in range(SIZE)]


def epoch_keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_datamodule_yields_the_same_grids_with_and_without_workers(tiny_shards, workers):
    """Default tiny shards, shuffled: two epochs of 0 and of 2 (persistent) workers hold the same 28 grids, each
    once, in a new order per epoch; a fresh loader told to start at epoch 1 (a resume) reads the straight run's
    epoch 1. Checked red: with `epoch` a plain attribute of the stream, persistent workers replayed epoch 0."""
    opts = dict(domains=TRAIN_DOMAINS, resolution=96, batch_size=4, num_workers=workers, shuffle_buffer=16)
    unshuffled = ProcessDataModule(tiny_shards["train"], **{**opts, "shuffle_buffer": 0, "num_workers": 0})
    reference = sorted(epoch_keys(unshuffled.train_dataloader()))
    loader = ProcessDataModule(tiny_shards["train"], **opts).train_dataloader()
    first, second = epoch_keys(loader), epoch_keys(loader)
    assert sorted(first) == sorted(second) == reference and len(set(reference)) == 28
    assert first != second
    resumed = ProcessDataModule(tiny_shards["train"], **opts).train_dataloader()
    resumed.load_state_dict({"epoch": 1, "consumed": 0})
    assert epoch_keys(resumed) == second
