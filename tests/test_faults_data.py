"""Data trouble during a run: a shard that disappears, is truncated or whose `pipe:` command fails is reported with
its URL, skipped and counted in the logged skip counters; shards that yield nothing stop the run with a message."""

from __future__ import annotations

import csv
import json
import random
import shutil
import tarfile
import warnings
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Callback

from pm_lightning import fit, shards, synth
from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.stream import EmptyStream
from tests.conftest import TRAIN_DOMAINS
from tests.test_fit import small_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter", "ignore::UserWarning")


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("four")
    synth.main(["--out", str(root / "synth"), "--per-domain", "4", "--size", "32", "--seed", "0", "--no-held-out"])
    assert (
        shards.main(
            ["--src", str(root / "synth"), "--out", str(root / "shards"), "--size", "32", "--max-per-shard", "7"]
        )
        == 0
    )
    return root / "shards"


class DeleteShards(Callback):
    """Delete shards of the running stream before batch `at` (a disk that lost them mid-run)."""

    def __init__(self, folder: str, names: list[str], at: int = 1):
        self.folder, self.names, self.at, self.seen = Path(folder), names, at, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen == self.at:
            for name in self.names:
                (self.folder / name).unlink()
        self.seen += 1


def logged(tmp_path) -> dict[str, float]:
    rows = list(csv.DictReader(open(next((tmp_path / "csv").rglob("metrics.csv")))))
    return {k: float(v) for row in rows for k, v in row.items() if v}


def run(tmp_path, tiny_base, train: str, max_steps=6, callbacks=(), samples_per_epoch=None):
    path = small_config(tmp_path, tiny_base, {"train": train}, max_steps=max_steps, every=100)
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"]["callbacks"] += list(callbacks)
    cfg["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "csv")},
    }
    cfg["trainer"]["log_every_n_steps"] = 1
    if samples_per_epoch:
        cfg["data"]["samples_per_epoch"] = samples_per_epoch
    path.write_text(yaml.safe_dump(cfg))
    return fit.main(["--config", str(path)])


def test_a_shard_that_disappears_mid_run_is_skipped_and_counted(tmp_path, tiny_base, four_shards):
    folder = tmp_path / "shards"
    shutil.copytree(four_shards, folder)
    gone = ["shard-000001.tar", "shard-000002.tar", "shard-000003.tar"]  # one of four stays
    cb = {"class_path": "tests.test_faults_data.DeleteShards", "init_args": {"folder": str(folder), "names": gone}}
    assert run(tmp_path, tiny_base, str(folder), max_steps=16, callbacks=[cb], samples_per_epoch=32) == 0
    assert logged(tmp_path)["data/skipped/bad_shard"] >= 1


def test_shards_that_all_disappear_stop_the_run_naming_them(tmp_path, tiny_base, four_shards, capsys):
    folder = tmp_path / "shards"
    shutil.copytree(four_shards, folder)
    names = sorted(p.name for p in folder.glob("shard-*.tar"))
    cb = {"class_path": "tests.test_faults_data.DeleteShards", "init_args": {"folder": str(folder), "names": names}}
    assert run(tmp_path, tiny_base, str(folder), max_steps=50, callbacks=[cb], samples_per_epoch=200) == 5
    err = capsys.readouterr().err
    assert "shard errors in a row" in err and str(folder / "shard-00000") in err and "data.train_shards" in err


def test_a_failing_pipe_command_is_skipped_beside_good_shards_and_alone_stops(tmp_path, tiny_base, four_shards, capsys):
    good = str(four_shards / "shard-000000.tar")
    broken = f"pipe:head -c 700 {good}; exit 3"  # cut inside its first member (no whole sample), then a failing exit
    mixed = tmp_path / "mixed"
    assert run(mixed, tiny_base, [good, broken], max_steps=8, samples_per_epoch=32) == 0
    assert logged(mixed)["data/skipped/bad_shard"] >= 1
    assert run(tmp_path / "alone", tiny_base, [broken], max_steps=4) == 5
    assert "pipe:head" in capsys.readouterr().err


def test_a_finite_stream_with_nothing_readable_stops_instead_of_spinning(tmp_path, four_shards):
    folder = tmp_path / "junk"
    folder.mkdir()
    for p in four_shards.glob("shard-*.tar"):
        (folder / p.name).write_bytes(b"\0" * 4096)  # zeros: an empty tar archive, no member at all
    dm = ProcessDataModule(
        train_shards=str(folder / "shard-{000000..000003}.tar"),
        domains=TRAIN_DOMAINS,
        resolution=96,
        batch_size=2,
        num_workers=0,
        resampled=False,
    )
    with pytest.raises(EmptyStream, match="yielded no batch"):
        next(iter(dm.train_dataloader()))


def fuzz(data: bytes, rng: random.Random) -> bytes:
    """Truncate, or flip bytes, or both."""
    out = bytearray(data)
    if rng.random() < 0.5:
        out = out[: rng.randrange(1, len(out))]
    for _ in range(rng.randrange(0, 20)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def test_fuzzed_shards_never_crash_the_reader_and_the_counts_add_up(tmp_path, four_shards):
    """300 randomly truncated / byte-flipped copies of a shard (index.json beside them): the reader never crashes
    and every sample present is either read or counted as skipped (a damaged member, or "lost" with its shard)."""
    source = four_shards / "shard-000000.tar"
    with tarfile.open(source) as tar:
        present = len({m.name.split(".")[0] for m in tar.getmembers()})
    data = source.read_bytes()
    rng, damaged, lost = random.Random(0), 0, 0
    index = json.loads((four_shards / "index.json").read_text())
    index.update(shards=[f"fuzz-{i}.tar" for i in range(300)], samples_per_shard=[present] * 300)
    (tmp_path / "index.json").write_text(json.dumps(index))
    for trial in range(300):
        path = tmp_path / f"fuzz-{trial}.tar"
        path.write_bytes(fuzz(data, rng))
        dm = ProcessDataModule(
            train_shards=str(path), domains=TRAIN_DOMAINS, resolution=96, batch_size=2, num_workers=0, resampled=False
        )
        read = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                for batch in dm.train_dataloader():
                    read += len(batch["key"])
            except EmptyStream:
                pass  # nothing readable at all: said, not spun
        skipped = dm.skipped
        samples_skipped = sum(n for reason, n in skipped.items() if reason != "bad_shard")  # bad_shard: events
        assert read + samples_skipped == present, (trial, read, skipped)
        damaged += samples_skipped > 0
        lost += skipped["lost"] > 0
    assert damaged > 100 and lost > 20  # the fuzzing did damage shards, and "lost" samples were counted


def test_unreadable_validation_shards_stop_the_step0_validation_with_the_message(
    tmp_path, tiny_base, four_shards, capsys
):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "shard-000000.tar").write_bytes(b"\0" * 4096)  # an empty archive: no sample at all
    cfg = small_config(tmp_path, tiny_base, {"train": str(four_shards)}, max_steps=1, every=100)
    args = ["--config", str(cfg), "--data.val_shards", str(junk / "shard-000000.tar"), "--validate_first", "true"]
    args += ["--trainer.limit_val_batches", "2"]
    assert fit.main(args) == 5
    assert "yielded no batch" in capsys.readouterr().err
