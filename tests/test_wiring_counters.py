"""Counters of faults "in a row": the non-finite guard of a training run and the shard reader's failures both start
again from zero after one good step / sample, so many faults in total, never `limit` in a row, do not stop a run.

Each test was checked red against the mutation its docstring names (applied by hand, test run, file restored with
`git checkout`)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from pm_lightning import fit
from pm_lightning.data.datamodule import ProcessDataModule
from tests.conftest import TRAIN_DOMAINS
from tests.test_fit import small_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def test_non_finite_steps_that_never_reach_the_limit_in_a_row_do_not_stop_the_run(
    tmp_path, tiny_base, tiny_shards, caplog
):
    """`python -m pm_lightning.fit` with max_nonfinite_steps 3 and NaN batches 1, 2, 4, 5 (four bad steps, two in a
    row at most, a good step between): the run finishes (exit 0) and warns "2 in a row" at most.
    Checked red: without `self.consecutive = 0` after a good step in NonFiniteGuard.check, the fourth bad step is
    counted the third in a row and the run stops with exit 3. About 10 s."""
    cfg = small_config(tmp_path, tiny_base, tiny_shards, max_steps=6, every=100)
    args = ["--config", str(cfg), "--model.init_args.max_nonfinite_steps", "3"]
    args += ["--trainer.callbacks+=tests.faults.NaNBatch", "--trainer.callbacks.batches=[1, 2, 4, 5]"]
    assert fit.main(args) == 0
    assert "step skipped (2 in a row)" in caplog.text and "(3 in a row)" not in caplog.text
    assert caplog.text.count("non-finite loss or gradient") == 4


def junk_and_good_shards(folder: Path, good: Path, runs: list[int]) -> list[str]:
    """Shard paths: `runs[0]` unreadable files, a copy of `good`, `runs[1]` unreadable files, a copy of `good`, ..."""
    folder.mkdir()
    urls = []
    for i, bad in enumerate(runs):
        for j in range(bad):
            path = folder / f"junk-{i}-{j}.tar"
            path.write_bytes(b"this is no tar archive\n" * 40)  # tarfile: invalid header -> one shard error each
            urls.append(str(path))
        copy = folder / f"good-{i}.tar"
        shutil.copy(good, copy)
        urls.append(str(copy))
    return urls


def read_all(urls: list[str]) -> tuple[int, dict[str, int]]:
    """Samples read by one finite pass of the datamodule's training loader, and its skip counts."""
    dm = ProcessDataModule(
        train_shards=urls, domains=TRAIN_DOMAINS, resolution=96, batch_size=2, num_workers=0, shuffle_buffer=0
    )
    read = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in dm.train_dataloader():
            read += len(batch["key"])
    return read, dm.skipped


def test_shard_errors_are_counted_in_a_row_not_in_total(tmp_path, tiny_shards):
    """70 unreadable shards in all (the reader stops at 50 in a row, its default), never more than 35 in a row: a
    finite pass reads every sample of the three good shards between them and counts the 70 errors.
    Checked red: without `self.failures_in_a_row = 0` in SkipCounter.sample_read, the pass stops with EmptyStream
    ("50 shard errors in a row") at the 50th error in total. About 2 s."""
    good = sorted(Path(tiny_shards["train"]).glob("*.tar"))[0]
    one_pass, _ = read_all([str(good)])
    urls = junk_and_good_shards(tmp_path / "mixed", good, [35, 35, 0])
    read, skipped = read_all(urls)
    assert read == 3 * one_pass and skipped["bad_shard"] == 70
