"""The shard stream's counters, ordering and rank slices through sequences that mix good and bad samples: the
cases the mutation run of `data/stream.py` (docs/TESTING.md, "Mutation testing") found untested. Each test was
checked red by hand with the mutants it names (the mutant's edit applied to the module, the test run and seen
failing, the file restored with `git checkout`)."""

from __future__ import annotations

import warnings

import pytest

from pm_lightning.data.datamodule import ProcessDataModule
from tests.test_datamodule import keys_of, sample, write_shards

BAD_PNG = b"\x89PNG cut short"


def rank_items(monkeypatch, shards: str, world: int) -> tuple[list[list[dict]], list[int]]:
    """The batches of one validation pass per simulated rank (webdataset reads RANK and WORLD_SIZE, as Lightning's
    launcher sets them), and each rank's count of corrupt PNGs."""
    out, counts = [], []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        dm = ProcessDataModule(shards, val_shards=shards, domains=["clay"], resolution=48, batch_size=2, num_workers=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batches = list(dm.val_dataloader())
        out.append(batches)
        counts.append(dm.skipped["bad_png"])
    return out, counts


def test_corrupt_pngs_on_two_ranks_become_invalid_stand_ins_so_both_ranks_yield_as_many_items(tmp_path, monkeypatch):
    """One shard of five, PNGs 0 and 3 corrupt, two ranks: rank 0 reads 0, 2, 4 and rank 1 reads 1, 3 and a pad.
    A corrupt PNG keeps its slot as an invalid stand-in (black, with its grid id, when no good sample came before
    it on that rank; else a copy of the last good one), so both ranks yield three items and DDP's collectives do not
    hang; each rank counts its own corrupt PNG once (the pad, a copy of sample 0, is not counted again).
    Checked red with stream.py mutants `ShardStream.__iter__` 16 (`world > 2`: no stand-ins on two ranks),
    `decode` 62 (the black stand-in without grid_id) and 75 (stand-ins not marked invalid)."""
    members = [sample(f"k{i}", "clay", seed=i) for i in range(5)]
    for i in (0, 3):
        members[i]["grid.png"] = BAD_PNG
    write_shards(tmp_path, [members])
    ranks, counts = rank_items(monkeypatch, str(tmp_path), world=2)
    items = [
        [(k, int(i), bool(v)) for b in batches for k, i, v in zip(b["key"], b["index"], b["valid"])]
        for batches in ranks
    ]
    assert items[0] == [("k0", -1, False), ("k2", 2, True), ("k4", 4, True)]
    assert items[1] == [("k1", 1, True), ("k1", -1, False), ("k1", -1, False)]
    assert counts == [1, 1]
    first = ranks[0][0]
    assert first["pixels"][0].eq(0).all() and len(first["grid_id"][0]) == 64  # black, keyed like any grid
    assert first["pixels"][1].ne(0).any()


@pytest.mark.parametrize("resampled", [False, True])
def test_every_epoch_of_one_shard_is_shuffled_anew(tmp_path, resampled):
    """One shard (its order among shards cannot change anything) of 12 samples, a shuffle buffer of 12: the next
    epoch is another order of the same samples, finite or resampled.
    Checked red with `ShardStream.__iter__` 9 (the shuffle seeded without the epoch): the resampled case fails (the
    finite one still passes: its buffer is kept across epochs, `data/epoch_shuffle.py`, so the next epoch does not
    start from the same state)."""
    write_shards(tmp_path, [[sample(f"k{i:02d}", "clay", seed=i) for i in range(12)]])
    extra = dict(resampled=True, samples_per_epoch=12) if resampled else dict(resampled=False)
    dm = ProcessDataModule(
        str(tmp_path), domains=["clay"], resolution=48, batch_size=4, num_workers=0, shuffle_buffer=12, **extra
    )
    loader = dm.train_dataloader()
    first, second = keys_of(loader), keys_of(loader)
    if not resampled:
        assert sorted(first) == sorted(second) == [f"k{i:02d}" for i in range(12)]
    assert first != second


def test_balancing_a_finite_stream_uses_the_index_counts_from_its_first_sample(tmp_path):
    """30 'big' samples, then 3 'small' ones, index.json counting both: balancing keeps a big sample with probability
    3 / 30 from the first one on (the index's counts), every small one. Online counts (no index) would keep every big
    sample read before the first small one.
    Checked red with `ShardStream._pass` 49 (the index's counts not passed to `balance`: 33 samples kept)."""
    members = [sample(f"b{i:02d}", "big", 1, 1, seed=i) for i in range(30)]
    members += [sample(f"s{i}", "small", 1, 1, seed=i) for i in range(3)]
    write_shards(tmp_path, [members])
    dm = ProcessDataModule(
        str(tmp_path), domains=["big", "small"], resolution=16, batch_size=4, num_workers=0, shuffle_buffer=0,
        resampled=False, balance_domains=True,
    )  # fmt: skip
    kept = keys_of(dm.train_dataloader())
    assert [k for k in kept if k.startswith("s")] == ["s0", "s1", "s2"]
    assert sum(k.startswith("b") for k in kept) <= 10  # 3 of 30 expected (none with this seed); online: 30


def test_the_seed_chooses_the_resampled_shards(tmp_path):
    """Resampled, no sample shuffle: the order of the samples is the order of the drawn shards, which the run's seed
    chooses (the same seed draws the same again).
    Checked red with `ShardStream._shard_stages` 2 (the shard draws seeded without the configured seed)."""
    write_shards(tmp_path, [[sample(f"k{i}_{j}", "clay", seed=i) for j in range(2)] for i in range(6)])

    def keys(seed: int) -> list[str]:
        dm = ProcessDataModule(
            str(tmp_path), domains=["clay"], resolution=48, batch_size=4, num_workers=0, shuffle_buffer=0,
            resampled=True, samples_per_epoch=12, seed=seed,
        )  # fmt: skip
        return keys_of(dm.train_dataloader())

    drawn = [keys(seed) for seed in range(3)]
    assert keys(1) == drawn[1] and len({tuple(k) for k in drawn}) == 3
