"""Finite streams on any number of ranks (`data/rank_slice.py`): every rank gets the same number of batches, the
slices are disjoint and cover the stream, and padding is masked out of validation (figures equal one process)."""

from __future__ import annotations

import pytest
import torch

from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.pixels import float_pixels
from pm_lightning.training.metrics import PerDomainMean
from tests.conftest import TRAIN_DOMAINS
from tests.test_datamodule import sample, write_shards
from tests.test_stage1 import make_module, randomize_adapters


def rank_batches(monkeypatch, val: str, world: int, workers: int = 0, batch_size: int = 2, **kw) -> list[list[dict]]:
    """One validation pass per simulated rank (webdataset reads RANK / WORLD_SIZE, as Lightning's launcher sets)."""
    out = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        dm = ProcessDataModule(val, val_shards=val, batch_size=batch_size, num_workers=workers, **kw)
        out.append(list(dm.val_dataloader()))
    return out


@pytest.mark.parametrize(("world", "workers"), [(2, 0), (4, 0), (3, 2)])
def test_one_shard_splits_into_equal_disjoint_slices_that_cover_it(tmp_path, monkeypatch, world, workers):
    """7 samples in ONE shard: every rank yields the same number of batches (split_by_node gave rank 1 none), the
    real samples of all ranks are the 7, each once, and the padding items are marked invalid."""
    write_shards(tmp_path, [[sample(f"k{i}", "clay", seed=i) for i in range(7)]])
    ranks = rank_batches(monkeypatch, str(tmp_path), world, workers, domains=["clay"], resolution=48)
    assert len({len(batches) for batches in ranks}) == 1 and len(ranks[0]) > 0
    items = [len(b["key"]) for b in ranks[0]]
    assert all([len(b["key"]) for b in batches] == items for batches in ranks)  # same batch sizes too
    real = [(k, int(i)) for batches in ranks for b in batches for k, i, v in zip(b["key"], b["index"], b["valid"]) if v]
    assert sorted(real) == [(f"k{i}", i) for i in range(7)]  # disjoint, complete, indexed by stream position
    slots = world * max(1, workers)
    padding = [int(i) for batches in ranks for b in batches for i, v in zip(b["index"], b["valid"]) if not v]
    assert len(padding) == slots * -(-7 // slots) - 7 and set(padding) <= {-1}


def test_validation_figures_equal_one_process_whatever_the_rank_count(tmp_path, monkeypatch, tiny_base, tiny_shards):
    """The tiny model's per-domain validation sums over 5 simulated ranks (36 samples: 4 padding items) equal one
    process's. Checked red: with the padding left in the metric (no `valid` mask in `validation_step`) the counts
    are 40, not 36; with the noise keyed by batch and rank (the old `VAL_SEED_OFFSET + batch_idx`) the sums differ."""
    module = make_module(tiny_base).eval()
    randomize_adapters(module)

    def metric_states(batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        module.val_fm = PerDomainMean(TRAIN_DOMAINS + ["mosaic", "origami"])
        with torch.no_grad():
            for i, batch in enumerate(batches):
                module.validation_step(float_pixels(batch), i)  # as the Trainer's batch-transfer hook hands it
        return module.val_fm.total.clone(), module.val_fm.count.clone()

    opts = dict(domains=TRAIN_DOMAINS, resolution=96, batch_size=4)
    single_total, single_count = metric_states(rank_batches(monkeypatch, tiny_shards["val"], 1, **opts)[0])
    states = [metric_states(batches) for batches in rank_batches(monkeypatch, tiny_shards["val"], 5, **opts)]
    total, count = sum(s[0] for s in states), sum(s[1] for s in states)  # what the metric's dist sync sums
    assert int(single_count.sum()) == 36 and torch.equal(count, single_count)
    torch.testing.assert_close(total, single_total, rtol=1e-5, atol=1e-7)
    assert (single_total > 0).sum() == (single_count > 0).sum()  # a loss on every domain that has samples
