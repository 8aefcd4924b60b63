"""Shard writing: round trips (tarfile and webdataset), MakeAnything import, bad inputs, index.json."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pm_lightning.data.grid import grid_to_frames, serpentine_cells
from pm_lightning.data.importers import cell_boxes, parse_caption
from pm_lightning.shards import main

SIZE = 8


def colour(domain: int, seq: int, k: int) -> tuple[int, int, int]:
    """A distinct solid colour per (domain, sequence, frame)."""
    return (40 * domain + 10, 20 * seq + 5, 25 * k + 3)


def make_sequence(
    root: Path, domain: str, seq: str, colours: list, caption: str | None = "a cat", steps=None, size=(SIZE, SIZE)
) -> Path:
    """Write one raw sequence folder with solid-colour frames."""
    path = root / domain / seq
    path.mkdir(parents=True)
    for k, c in enumerate(colours):
        Image.new("RGB", size, c).save(path / f"frame_{k}.png")
    if caption is not None:
        meta = {"caption": caption, **({"steps": steps} if steps is not None else {})}
        (path / "meta.json").write_text(json.dumps(meta))
    return path


def make_corpus(root: Path, per_domain: int = 3, domains=("clay", "lego")) -> None:
    """Valid 9-frame sequences with per-step captions."""
    for d, domain in enumerate(domains):
        for s in range(per_domain):
            cols = [colour(d, s, k) for k in range(9)]
            make_sequence(root, domain, f"seq{s}", cols, f"{domain} {s}", [f"step {k}" for k in range(9)])


def read_tar(path: Path) -> dict[str, bytes]:
    """Member name -> bytes, read with plain tarfile."""
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def cell_colours(png: bytes, rows: int, cols: int) -> list[tuple]:
    """Centre colour of every frame of a grid, in temporal order."""
    grid = Image.open(io.BytesIO(png)).convert("RGB")
    return [f.getpixel((f.size[0] // 2, f.size[1] // 2)) for f in grid_to_frames(grid, rows, cols)]


def run(src: Path, out: Path, *extra: str) -> int:
    """The CLI in-process (one worker keeps it fast)."""
    return main(["--src", str(src), "--out", str(out), "--workers", "1", "--size", str(SIZE), *extra])


def test_folder_round_trip_with_tarfile(tmp_path):
    make_corpus(tmp_path / "raw")
    assert run(tmp_path / "raw", tmp_path / "out", "--max-per-shard", "4") == 0
    shards = sorted((tmp_path / "out").glob("*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    members = {k: v for p in shards for k, v in read_tar(p).items()}
    assert len(members) == 12
    for d, domain in enumerate(("clay", "lego")):
        for s in range(3):
            meta = json.loads(members[f"{domain}/seq{s}.json"])
            assert meta == {
                "caption": f"{domain} {s}",
                "domain": domain,
                "rows": 3,
                "cols": 3,
                "frames": 9,
                "steps": [f"step {k}" for k in range(9)],
                "source": str(tmp_path / "raw" / domain / f"seq{s}"),
            }
            png = members[f"{domain}/seq{s}.grid.png"]
            assert Image.open(io.BytesIO(png)).size == (3 * SIZE, 3 * SIZE)
            assert cell_colours(png, 3, 3) == [colour(d, s, k) for k in range(9)]


def test_round_trip_with_webdataset_and_index(tmp_path):
    make_corpus(tmp_path / "raw")
    assert run(tmp_path / "raw", tmp_path / "out", "--max-per-shard", "4") == 0
    urls = sorted(str(p) for p in (tmp_path / "out").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert sorted(s["__key__"] for s in samples) == sorted(f"{d}/seq{s}" for d in ("clay", "lego") for s in range(3))
    assert all(s["grid.png"].size == (3 * SIZE, 3 * SIZE) and s["json"]["rows"] == 3 for s in samples)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["total"] == 6 and index["domains"] == {"clay": 3, "lego": 3}
    assert index["shards"] == ["shard-000000.tar", "shard-000001.tar"]
    assert index["samples_per_shard"] == [4, 2] and index["layouts"] == {"3x3": 6}
    assert index["skipped"] == [] and index["skipped_count"] == 0
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_shards_mix_domains_and_are_deterministic(tmp_path):
    make_corpus(tmp_path / "raw", per_domain=4)
    assert run(tmp_path / "raw", tmp_path / "a", "--max-per-shard", "4") == 0
    assert run(tmp_path / "raw", tmp_path / "b", "--max-per-shard", "4") == 0
    for name in ("shard-000000.tar", "shard-000001.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert run(tmp_path / "raw", tmp_path / "c", "--max-per-shard", "4", "--shuffle-seed", "-1") == 0
    first = read_tar(tmp_path / "c" / "shard-000000.tar")
    assert sorted(first) == list(first) and all(n.startswith("clay/") for n in first)  # plain sorted order


def test_non_square_frames_are_padded_white_and_centred(tmp_path):
    make_sequence(tmp_path / "raw", "clay", "tall", [(200, 0, 0)] * 4, size=(4, 8))
    assert run(tmp_path / "raw", tmp_path / "out") == 0
    grid = Image.open(io.BytesIO(read_tar(tmp_path / "out" / "shard-000000.tar")["clay/tall.grid.png"]))
    frame = grid_to_frames(grid.convert("RGB"), 2, 2)[0]
    assert frame.size == (SIZE, SIZE)
    assert frame.getpixel((SIZE // 2, SIZE // 2)) == (200, 0, 0)
    assert frame.getpixel((0, 0)) == (255, 255, 255) and frame.getpixel((SIZE - 1, SIZE // 2)) == (255, 255, 255)


def make_grid_png(path: Path, rows: int, cols: int, order: str, cell: int = 6) -> list[tuple]:
    """A MakeAnything-style grid whose frame k has a solid colour; returns the colours by k."""
    colours = [(20 * k + 10, 255 - 20 * k, 7 * k) for k in range(rows * cols)]
    grid = Image.new("RGB", (cols * cell, rows * cell))
    for k, (r, c) in enumerate(serpentine_cells(rows, cols)):
        c = cols - 1 - c if order == "reverse-s" else c
        grid.paste(Image.new("RGB", (cell, cell), colours[k]), (c * cell, r * cell))
    grid.save(path)
    return colours


@pytest.mark.parametrize("order,frames", [("s", 9), ("reverse-s", 9), ("reverse-s", 4), ("s", 4)])
def test_makeanything_import_reorders_into_serpentine(tmp_path, order, frames):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = cols = 3 if frames == 9 else 2
    colours = make_grid_png(raw / "cat.png", rows, cols, order)
    (raw / "cat.caption").write_text("a watercolour  --lora_up_cur 2   of a cat\n")
    assert run(raw, tmp_path / "out", "--format", "makeanything", "--frames", str(frames), "--order", order) == 0
    members = read_tar(tmp_path / "out" / "shard-000000.tar")
    meta = json.loads(members["domain-2/cat.json"])
    assert meta["caption"] == "a watercolour of a cat"
    assert meta["domain"] == "domain-2" and (meta["rows"], meta["cols"], meta["frames"]) == (rows, cols, frames)
    assert cell_colours(members["domain-2/cat.grid.png"], rows, cols) == colours


def test_makeanything_domain_names_and_untagged(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "lego").mkdir(parents=True)
    make_grid_png(raw / "a.png", 3, 3, "s")
    (raw / "a.caption").write_text("--lora_up_cur 1 a house")
    make_grid_png(raw / "lego" / "b.png", 3, 3, "s")
    (raw / "lego" / "b.caption").write_text("a car")
    make_grid_png(raw / "c.png", 3, 3, "s")
    (raw / "c.caption").write_text("no tag at top level")
    make_grid_png(raw / "d.png", 3, 3, "s")  # no caption file
    assert run(raw, tmp_path / "out", "--format", "makeanything", "--domain-names", "paint,clay") == 0
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["domains"] == {"clay": 1, "lego": 1}
    reasons = {Path(s["path"]).name: s["reason"] for s in index["skipped"]}
    assert "domain unknown" in reasons["c.caption"] and "missing caption" in reasons["d.png"]
    err = capsys.readouterr().err
    assert str(raw / "c.caption") in err and str(raw / "d.png") in err


def test_parse_caption_and_cell_boxes():
    assert parse_caption("x --lora_up_cur 3 y") == ("x y", "domain-3")
    assert parse_caption("plain") == ("plain", None)
    with pytest.raises(ValueError, match="lists only 1"):
        parse_caption("--lora_up_cur 4 x", ["a"])
    assert cell_boxes((10, 10), 2, 2, "reverse-s")[0] == (5, 0, 10, 5)  # row 0 starts at the right
    assert len(set(cell_boxes((1000, 1000), 3, 3, "s"))) == 9  # sizes not divisible by 3 still split


def make_bad_inputs(raw: Path) -> dict[str, str]:
    """One folder per bad-input case; returns expected path -> reason fragment."""
    good = [colour(0, 0, k) for k in range(4)]
    bad = make_sequence(raw, "clay", "unreadable", good)
    (bad / "frame_2.png").write_bytes(b"not a png")
    (raw / "clay" / "empty").mkdir(parents=True)
    make_sequence(raw, "clay", "nocaption", good, caption=None)
    make_sequence(raw, "clay", "five", good + [good[0]])
    make_sequence(raw, "clay", "steps", good, steps=["a", "b"])
    return {
        str(bad / "frame_2.png"): "unreadable image",
        str(raw / "clay" / "empty"): "empty folder",
        str(raw / "clay" / "nocaption"): "missing caption",
        str(raw / "clay" / "five"): "fit",
        str(raw / "clay" / "steps"): "2 steps for 4 frames",
    }


def test_bad_inputs_are_reported_skipped_and_counted(tmp_path, capsys):
    raw = tmp_path / "raw"
    expected = make_bad_inputs(raw)
    make_sequence(raw, "lego", "ok", [colour(1, 0, k) for k in range(4)])
    assert run(raw, tmp_path / "out") == 0
    err = capsys.readouterr().err
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["total"] == 1 and index["skipped_count"] == 5
    got = {s["path"]: s["reason"] for s in index["skipped"]}
    assert set(got) == set(expected)
    for path, fragment in expected.items():
        assert fragment in got[path]
        assert f"skipped {path}: " in err


def test_strict_fails_and_writes_nothing(tmp_path, capsys):
    raw = tmp_path / "raw"
    make_corpus(raw, per_domain=2)
    (raw / "lego" / "seq1" / "frame_3.png").write_bytes(b"broken")  # found only while rendering
    assert run(raw, tmp_path / "out", "--strict", "--max-per-shard", "1") == 1
    assert "--strict" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_nothing_valid_exits_non_zero_and_writes_nothing(tmp_path):
    raw = tmp_path / "raw"
    make_bad_inputs(raw)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pm_lightning.shards",
            "--src",
            str(raw),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "nothing written" in proc.stderr and "all 5 inputs were skipped" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_rerun_replaces_shards_and_removes_stale_ones(tmp_path):
    make_corpus(tmp_path / "raw")
    assert run(tmp_path / "raw", tmp_path / "out", "--max-per-shard", "1") == 0
    assert len(list((tmp_path / "out").glob("shard-*.tar"))) == 6
    assert run(tmp_path / "raw", tmp_path / "out", "--max-per-shard", "4") == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


def test_grids_keep_exact_pixels_at_frame_size(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "raw" / "clay" / "noise"
    path.mkdir(parents=True)
    frames = rng.integers(0, 256, size=(4, SIZE, SIZE, 3), dtype=np.uint8)
    for k, f in enumerate(frames):
        Image.fromarray(f).save(path / f"{k:02d}.png")
    (path / "caption.txt").write_text("noise\n")
    assert run(tmp_path / "raw", tmp_path / "out") == 0
    grid = Image.open(io.BytesIO(read_tar(tmp_path / "out" / "shard-000000.tar")["clay/noise.grid.png"]))
    back = np.stack([np.asarray(f) for f in grid_to_frames(grid, 2, 2)])
    np.testing.assert_array_equal(back, frames)  # PNG is lossless and no resize happens at frame size
