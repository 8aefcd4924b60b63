"""ProcessDataModule: batch contract, domains, worker splitting, corrupt members, balancing, shard specs."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from pm_lightning.data.datamodule import (
    CorruptSampleWarning,
    ProcessDataModule,
    ResolutionError,
    expand_shards,
    valid_resolution,
)
from pm_lightning.data.domains import UNSEEN_DOMAIN
from pm_lightning.data.grid import frames_to_grid
from pm_lightning.data.pixels import float_pixels
from pm_lightning.data.skip_counter import EmptyStream

CELL = 16


def grid_png(rows: int, cols: int, seed: int) -> bytes:
    """A grid whose frame k is solid colour (seed, k, 255 - k)."""
    frames = [Image.new("RGB", (CELL, CELL), (seed % 256, k, 255 - k)) for k in range(rows * cols)]
    buf = io.BytesIO()
    frames_to_grid(frames, rows, cols).save(buf, format="PNG")
    return buf.getvalue()


def sample(key: str, domain: str, rows: int = 3, cols: int = 3, seed: int = 0) -> dict:
    """One shard sample in the project's format."""
    meta = {
        "caption": f"a {domain}",
        "domain": domain,
        "rows": rows,
        "cols": cols,
        "frames": rows * cols,
        "steps": [f"s{k}" for k in range(rows * cols)],
        "source": key,
    }
    return {"__key__": key, "grid.png": grid_png(rows, cols, seed), "json": json.dumps(meta).encode()}


def write_shards(out: Path, per_shard: list[list[dict]], index: bool = True) -> list[str]:
    """Tar shards (and an index.json with domain counts) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, samples in enumerate(per_shard):
        path = out / f"shard-{i:06d}.tar"
        with wds.TarWriter(str(path), encoder=False) as tar:
            for s in samples:
                tar.write(s)
        paths.append(str(path))
    if index:
        flat = [json.loads(s["json"]) for shard in per_shard for s in shard if "json" in s]
        layouts = Counter(f"{m['rows']}x{m['cols']}" for m in flat)
        (out / "index.json").write_text(
            json.dumps({"total": len(flat), "domains": Counter(m["domain"] for m in flat), "layouts": layouts})
        )
    return paths


def corpus(out: Path, shards: int = 3, per_shard: int = 5, **kw) -> list[str]:
    """`shards` shards of clay/lego samples with unique keys."""
    data = [
        [sample(f"s{i}_{j}", ("clay", "lego")[j % 2], seed=i * 10 + j) for j in range(per_shard)] for i in range(shards)
    ]
    return write_shards(out, data, **kw)


def keys_of(loader) -> list[str]:
    """Every key of one pass over a loader."""
    return [k for batch in loader for k in batch["key"]]


def test_batch_contract(tmp_path):
    corpus(tmp_path)
    dm = ProcessDataModule(str(tmp_path), domains=["lego", "clay"], resolution=96, batch_size=4, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {
        "pixels",
        "caption",
        "steps",
        "domain",
        "domain_name",
        "rows",
        "cols",
        "key",
        "url",
        "grid_id",
        "index",
        "valid",
    }
    assert batch["valid"].all() and batch["index"].dtype == torch.long
    assert len(set(batch["grid_id"])) == 4 and all(len(g) == 64 for g in batch["grid_id"])  # sha256 of each PNG
    assert batch["pixels"].shape == (4, 96, 96, 3) and batch["pixels"].dtype == torch.uint8  # as decoded, in bytes
    pixels = float_pixels(batch)["pixels"]  # what the module sees after the batch-transfer hook
    assert pixels.shape == (4, 3, 96, 96) and pixels.dtype == torch.float32 and pixels.is_contiguous()
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert batch["domain"].dtype == batch["rows"].dtype == batch["cols"].dtype == torch.long
    assert batch["rows"].tolist() == batch["cols"].tolist() == [3] * 4
    for i, name in enumerate(batch["domain_name"]):
        assert batch["domain"][i].item() == ["lego", "clay"].index(name)
        assert batch["caption"][i] == f"a {name}" and batch["steps"][i] == [f"s{k}" for k in range(9)]
    # frame k (serpentine) is (seed, k, 255 - k): check the centre of frame 3 (row 1, col 2) exactly
    assert batch["pixels"][0, 32 + 16, 64 + 16, 1:].tolist() == [3, 252]
    assert torch.allclose(pixels[0, 1:, 32 + 16, 64 + 16], torch.tensor([3, 252]) / 127.5 - 1, atol=1e-6)


def test_unseen_domain_index(tmp_path):
    corpus(tmp_path, shards=1)
    dm = ProcessDataModule(
        str(tmp_path), domains=["clay"], resolution=48, batch_size=5, num_workers=0, shuffle_buffer=0
    )
    batch = next(iter(dm.train_dataloader()))
    expected = [0 if n == "clay" else UNSEEN_DOMAIN for n in batch["domain_name"]]
    assert batch["domain"].tolist() == expected and UNSEEN_DOMAIN in expected and "lego" in batch["domain_name"]


def test_domains_default_to_index(tmp_path):
    corpus(tmp_path, shards=1)
    dm = ProcessDataModule(str(tmp_path), resolution=48, num_workers=0)
    dm.setup("fit")
    assert dm.domains == ["clay", "lego"]


def test_two_workers_see_every_sample_once_per_epoch(tmp_path):
    corpus(tmp_path, shards=4, per_shard=5)
    dm = ProcessDataModule(
        str(tmp_path), domains=["clay"], resolution=48, batch_size=3, num_workers=2, shuffle_buffer=8
    )
    loader = dm.train_dataloader()
    expected = sorted(f"s{i}_{j}" for i in range(4) for j in range(5))
    first, second = keys_of(loader), keys_of(loader)
    assert sorted(first) == expected and sorted(second) == expected
    assert first != second  # reshuffled per epoch


def test_validation_is_finite_and_deterministic(tmp_path):
    corpus(tmp_path / "val", shards=2)
    dm = ProcessDataModule(
        str(tmp_path / "val"),
        val_shards=str(tmp_path / "val"),
        domains=["clay"],
        resolution=48,
        batch_size=4,
        num_workers=2,
        resampled=True,
    )
    loader = dm.val_dataloader()
    first = keys_of(loader)
    assert sorted(first) == sorted(f"s{i}_{j}" for i in range(2) for j in range(5))
    assert keys_of(loader) == first


def corrupt_shards(tmp_path: Path) -> list[str]:
    """One shard with a bad PNG, bad JSON and a missing part; one truncated shard; good samples."""
    bad_png = dict(sample("bad_png", "clay"), **{"grid.png": b"\x89PNG garbage"})
    bad_json = dict(sample("bad_json", "clay"), json=b"{not json")
    missing = {k: v for k, v in sample("missing", "clay").items() if k != "grid.png"}
    good = [sample(f"good{j}", "lego", seed=j) for j in range(4)]
    paths = write_shards(tmp_path, [[good[0], bad_png, good[1], bad_json, missing, good[2]], [good[3]]], index=False)
    truncated = tmp_path / "shard-000002.tar"
    whole = Path(paths[1]).read_bytes()
    truncated.write_bytes(whole[:700])  # cut inside the first member
    return paths + [str(truncated)]


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_members_are_skipped_and_counted(tmp_path, workers):
    corrupt_shards(tmp_path)
    dm = ProcessDataModule(
        str(tmp_path), domains=["lego"], resolution=48, batch_size=2, num_workers=workers, shuffle_buffer=0
    )
    with pytest.warns(CorruptSampleWarning) if workers == 0 else _no_check():
        keys = keys_of(dm.train_dataloader())
    assert sorted(keys) == ["good0", "good1", "good2", "good3"]
    skipped = dm.skipped
    assert skipped["bad_png"] == 1 and skipped["bad_json"] == 1 and skipped["missing_part"] >= 1
    assert skipped["bad_shard"] >= 1  # the truncated tar


def test_members_with_impossible_layouts_are_skipped_and_counted(tmp_path):
    """Well-formed members whose layout cannot be a grid at this resolution: zero, negative, absurd or
    non-splitting rows / cols, step texts that are not one per frame. Checked red: with the old per-member
    `check_resolution` call, `"rows": 0` ended the stream with ZeroDivisionError and `"rows": 7` stopped it."""

    def bad(key: str, **meta) -> dict:
        s = sample(key, "lego")
        s["json"] = json.dumps({**json.loads(s["json"]), **meta}).encode()
        return s

    members = [
        sample("good0", "lego"),
        bad("zero", rows=0),
        bad("negative", cols=-3),
        bad("absurd", rows=10**9),
        bad("seven", rows=7),  # 48 px do not split into 7 rows of whole 16-px tokens
        bad("steps", steps=["a", "b"]),  # 2 step texts for 9 frames
        bad("huge", rows=float("inf")),  # JSON Infinity: not an integer at all
        sample("good1", "lego"),
    ]
    paths = write_shards(tmp_path, [members], index=False)
    dm = ProcessDataModule(paths[0], domains=["lego"], resolution=48, batch_size=2, num_workers=0, shuffle_buffer=0)
    with pytest.warns(CorruptSampleWarning, match=r"key 'zero' \(bad_layout\): rows=0, cols=3"):
        assert sorted(keys_of(dm.train_dataloader())) == ["good0", "good1"]
    assert dm.skipped["bad_layout"] == 5 and dm.skipped["bad_json"] == 1


class _no_check:
    """Context manager doing nothing (worker warnings go to the workers' stderr)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_corrupt_warning_names_shard_and_key(tmp_path):
    paths = write_shards(tmp_path, [[dict(sample("broken", "clay"), json=b"[")]], index=False)
    dm = ProcessDataModule(paths[0], domains=["clay"], resolution=48, num_workers=0)
    with pytest.warns(CorruptSampleWarning, match=r"shard-000000\.tar key 'broken' \(bad_json\)"):
        with pytest.raises(EmptyStream, match="yielded no batch"):  # nothing else to read: said, not spun
            keys_of(dm.train_dataloader())


def imbalanced(tmp_path: Path, index: bool) -> None:
    """200 'big' vs 20 'small' 1x1 samples over 4 shards."""
    samples = [sample(f"b{i}", "big", 1, 1) for i in range(200)] + [sample(f"s{i}", "small", 1, 1) for i in range(20)]
    write_shards(tmp_path, [samples[i::4] for i in range(4)], index=index)


@pytest.mark.parametrize("index", [True, False])
def test_balanced_sampling_is_roughly_uniform(tmp_path, index):
    imbalanced(tmp_path, index)
    kw = dict(
        domains=["big", "small"],
        resolution=16,
        batch_size=20,
        num_workers=0,
        resampled=True,
        samples_per_epoch=400,
        shuffle_buffer=50,
    )
    plain = Counter(n for b in ProcessDataModule(str(tmp_path), **kw).train_dataloader() for n in b["domain_name"])
    balanced = Counter(
        n
        for b in ProcessDataModule(str(tmp_path), balance_domains=True, **kw).train_dataloader()
        for n in b["domain_name"]
    )
    assert sum(plain.values()) == sum(balanced.values()) == 400
    assert plain["small"] / 400 < 0.15
    assert 0.38 < balanced["small"] / 400 < 0.62


def test_resampled_epoch_length(tmp_path):
    corpus(tmp_path, shards=2)
    dm = ProcessDataModule(
        str(tmp_path),
        domains=["clay"],
        resolution=48,
        batch_size=4,
        num_workers=2,
        resampled=True,
        samples_per_epoch=40,
    )
    loader = dm.train_dataloader()
    assert len(loader) == 10
    assert len(keys_of(loader)) == 40


def test_brace_glob_list_and_pipe_specs(tmp_path):
    paths = corpus(tmp_path, shards=3)
    every = sorted(f"s{i}_{j}" for i in range(3) for j in range(5))
    brace = str(tmp_path / "shard-{000000..000002}.tar")
    assert expand_shards(brace) == paths == expand_shards(str(tmp_path / "shard-*.tar")) == expand_shards(str(tmp_path))
    assert expand_shards([paths[0], str(tmp_path / "shard-00000[12].tar")]) == paths
    assert expand_shards("https://host/shard-{0..1}.tar") == ["https://host/shard-0.tar", "https://host/shard-1.tar"]
    for spec in (brace, str(tmp_path / "shard-*.tar"), f"pipe:cat {tmp_path}/shard-{{000000..000002}}.tar"):
        dm = ProcessDataModule(spec, domains=["clay"], resolution=48, batch_size=4, num_workers=0)
        assert sorted(keys_of(dm.train_dataloader())) == every


def test_missing_shards_error_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="shard-000009.tar does not exist"):
        expand_shards(str(tmp_path / "shard-000009.tar"))
    with pytest.raises(FileNotFoundError, match="python -m pm_lightning.shards"):
        expand_shards(str(tmp_path / "*.tar"))


def test_resolution_must_align_cells_with_tokens(tmp_path):
    assert valid_resolution(180, [(3, 3)]) == 192
    assert valid_resolution(1024, [(3, 3), (2, 2)]) == 1056
    corpus(tmp_path, shards=1)
    with pytest.raises(ResolutionError, match="use resolution=192"):
        ProcessDataModule(str(tmp_path), resolution=180).setup("fit")
    (tmp_path / "index.json").unlink()  # no index: each member is skipped and counted while streaming
    dm = ProcessDataModule(str(tmp_path), domains=["clay"], resolution=1024, num_workers=0)
    with pytest.warns(CorruptSampleWarning, match=r"3x3 grid does not split resolution=1024"):
        with pytest.raises(EmptyStream, match=r"'bad_layout': 5"):
            keys_of(dm.train_dataloader())


def test_grids_are_resized_cell_by_cell(tmp_path):
    write_shards(tmp_path, [[sample("a", "clay", 2, 2)]])
    dm = ProcessDataModule(str(tmp_path), domains=["clay"], resolution=96, batch_size=1, num_workers=0)
    pixels = next(iter(dm.train_dataloader()))["pixels"][0]  # (96, 96, 3) uint8; frame 2 is bottom right
    expected = torch.tensor([0, 2, 253], dtype=torch.uint8)
    assert torch.equal(pixels[48:, 48:], expected.expand(48, 48, 3))  # no bleeding


def test_tar_members_readable_by_tarfile(tmp_path):
    paths = corpus(tmp_path, shards=1)
    with tarfile.open(paths[0]) as tar:
        assert tar.getnames()[:2] == ["s0_0.grid.png", "s0_0.json"]


def _keys(batches) -> list[list[str]]:
    return [list(b["key"]) for b in batches]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_mid_epoch_exactly(tmp_path, workers):
    """State after k batches, loaded into a fresh loader, continues with the straight run's batches."""
    corpus(tmp_path / "s", shards=4, per_shard=6)
    kw = dict(
        domains=["a", "b"],
        resolution=48,
        batch_size=2,
        num_workers=workers,
        shuffle_buffer=4,
        resampled=True,
        samples_per_epoch=16,
    )

    def loader():
        dm = ProcessDataModule(str(tmp_path / "s"), **kw)
        dm.setup("fit")
        return dm.train_dataloader()

    straight = loader()
    epoch0, epoch1 = _keys(straight), _keys(straight)
    assert len(epoch0) == len(straight) == 8 and epoch0 != epoch1  # a new epoch reshuffles

    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 0, "consumed": 3}
    resumed = loader()
    resumed.load_state_dict(state)
    assert _keys(head) + _keys(resumed) == epoch0
    assert _keys(resumed) == epoch1  # and the following epoch is the straight run's second


def test_loader_state_at_epoch_end_starts_the_next_epoch(tmp_path):
    corpus(tmp_path / "s", shards=2, per_shard=6)
    kw = dict(
        domains=["a", "b"],
        resolution=48,
        batch_size=2,
        num_workers=0,
        shuffle_buffer=4,
        resampled=True,
        samples_per_epoch=8,
    )
    dm = ProcessDataModule(str(tmp_path / "s"), **kw)
    straight = dm.train_dataloader()
    _keys(straight)
    state = straight.state_dict()
    epoch1 = _keys(straight)
    fresh = ProcessDataModule(str(tmp_path / "s"), **kw).train_dataloader()
    fresh.load_state_dict(state)
    assert _keys(fresh) == epoch1
