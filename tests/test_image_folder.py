"""Your own pictures: folders of grid images / single pictures with same-name .txt captions (data/image_folder.py),
through the documented commands `shards --images DIR` and `style_lora --images DIR`, on folders made here."""

from __future__ import annotations

import json
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pm_lightning import shards, style_lora
from pm_lightning.data.grid import frames_to_grid
from pm_lightning.data.image_folder import load_pictures

CELL = 32


def frames(seed: int, n: int) -> list[Image.Image]:
    """n distinct random RGB frames of CELL px."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (CELL, CELL, 3), dtype=np.uint8)) for _ in range(n)]


def write(folder: Path, name: str, image: Image.Image | None, caption: str | None) -> Path:
    """`name.png` (or, with image None, a file that is no image) and `name.txt` when `caption` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if image is None:
        path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    else:
        image.save(path)
    if caption is not None:
        (folder / f"{name}.txt").write_text(caption + "\n")
    return path


def read_shards(out: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """{key: (metadata, grid pixels)} of every sample in the shard folder, read with plain tarfile."""
    members: dict[str, dict] = {}
    for tar in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return {
        k: (json.loads(v["json"]), np.asarray(Image.open(BytesIO(v["grid.png"])).convert("RGB")))
        for k, v in members.items()
    }


@pytest.fixture()
def grid_folder(tmp_path) -> tuple[Path, dict[str, list[Image.Image]]]:
    """`10_stacks/`: three good 3x3 grids and three bad inputs (no caption, not an image, another size)."""
    folder = tmp_path / "10_stacks"
    truth = {f"g{i}": frames(i, 9) for i in range(3)}
    for name, fr in truth.items():
        write(folder, name, frames_to_grid(fr, 3, 3), f"stack number {name}")
    write(folder, "no_caption", frames_to_grid(frames(7, 9), 3, 3), None)
    write(folder, "broken", None, "a broken file")
    write(folder, "bigger", frames_to_grid(frames(8, 9), 3, 3).resize((4 * CELL, 4 * CELL)), "another size")
    (folder / "notes.md").write_text("not an image, ignored")
    return folder, truth


def test_shards_images_imports_the_grids_and_reports_each_bad_input(tmp_path, grid_folder, capsys):
    """Mixed sizes: checked once red by dropping `same_size` from discover_image_folder (the 128-px grid was then
    imported, resized to 96 px, as a fourth sample)."""
    folder, truth = grid_folder
    out = tmp_path / "shards"
    args = ["--images", str(folder), "--frames", "9", "--size", str(CELL), "--out", str(out), "--workers", "1"]
    assert shards.main(args) == 0
    samples = read_shards(out)
    assert sorted(samples) == [f"stacks/g{i}" for i in range(3)]  # the domain: the folder name without kohya's "10_"
    for name, fr in truth.items():
        meta, grid = samples[f"stacks/{name}"]
        assert meta["caption"] == f"stack number {name}" and meta["domain"] == "stacks"
        assert (meta["rows"], meta["cols"], meta["frames"]) == (3, 3, 9)
        assert np.array_equal(grid, np.asarray(frames_to_grid(fr, 3, 3)))  # cells at --size: stored unchanged
    index = json.loads((out / "index.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in index["skipped"]}
    assert index["skipped_count"] == 3 and set(reasons) == {"no_caption.png", "broken.png", "bigger.png"}
    assert reasons["no_caption.png"].startswith("missing caption: no no_caption.txt")
    assert reasons["broken.png"].startswith("unreadable image")
    assert reasons["bigger.png"] == "mixed sizes: 128x128 px, but 3 grids of the folder are 96x96"
    err = capsys.readouterr().err
    assert all(f"skipped {folder / n}" in err for n in reasons)  # each reported by path


def test_strict_refuses_the_folder_and_writes_nothing(tmp_path, grid_folder, capsys):
    folder, _ = grid_folder
    out = tmp_path / "shards"
    assert shards.main(["--images", str(folder), "--frames", "9", "--out", str(out), "--strict", "--workers", "1"]) == 1
    assert "--strict" in capsys.readouterr().err
    assert not (out / "index.json").exists() and not list(out.glob("shard-*.tar"))


def test_layout_from_the_sidecar_with_reverse_s_order_and_the_domain_flag(tmp_path):
    """layout.json gives 2x2 grids drawn in the ɔ order (row 0 right to left): the shards hold our serpentine grid."""
    folder = tmp_path / "mine"
    fr = frames(3, 4)
    s_grid = np.asarray(frames_to_grid(fr, 2, 2))
    write(folder, "a", Image.fromarray(np.ascontiguousarray(s_grid[:, ::-1])), "a two by two")  # columns mirrored
    mirrored = [np.ascontiguousarray(np.asarray(f)[:, ::-1]) for f in fr]  # each cell's pixels mirrored too
    (folder / "layout.json").write_text('{"frames": 4, "order": "reverse-s"}')
    out = tmp_path / "shards"
    assert shards.main(["--images", str(folder), "--domain", "toys", "--size", str(CELL), "--out", str(out)]) == 0
    ((key, (meta, grid)),) = read_shards(out).items()
    assert key == "toys/a" and (meta["rows"], meta["cols"], meta["domain"]) == (2, 2, "toys")
    expected = frames_to_grid([Image.fromarray(m) for m in mirrored], 2, 2)
    assert np.array_equal(grid, np.asarray(expected))  # frames re-ordered, their pixels left as drawn


def test_several_folders_are_several_domains(tmp_path):
    a, b = tmp_path / "lego", tmp_path / "5_clay"
    write(a, "x", frames_to_grid(frames(1, 4), 2, 2), "a lego house")
    write(b, "x", frames_to_grid(frames(2, 4), 2, 2), "a clay pot")
    out = tmp_path / "shards"
    assert shards.main(["--images", str(a), str(b), "--frames", "4", "--size", str(CELL), "--out", str(out)]) == 0
    assert json.loads((out / "index.json").read_text())["domains"] == {"clay": 1, "lego": 1}


@pytest.mark.parametrize(
    ("sidecar", "needle"),
    [
        (None, "pass --frames 9 (3x3) or --frames 4 (2x2), or write"),
        ('{"frames": 5}', "layout.json"),
        ('{"rows": 3}', "rows and cols must both be positive integers"),
        ('{"frames": 9, "order": "zigzag"}', "order must be one of"),
        ("{not json", "is not readable JSON"),
    ],
)
def test_an_unknown_or_bad_layout_is_an_error_naming_the_fix(tmp_path, capsys, sidecar, needle):
    folder = tmp_path / "grids"
    write(folder, "a", frames_to_grid(frames(1, 9), 3, 3), "a caption")
    if sidecar is not None:
        (folder / "layout.json").write_text(sidecar)
    assert shards.main(["--images", str(folder), "--out", str(tmp_path / "out")]) == 1
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out" / "index.json").exists()


def test_domain_without_images_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as info:
        shards.main(["--src", str(tmp_path), "--domain", "x", "--out", str(tmp_path / "o")])
    assert info.value.code == 2


# ------------------------------------------------------------------------------------------- pictures


def picture_folder(root: Path) -> Path:
    """`origami/`: four captioned pictures of three sizes and aspect ratios, and two bad inputs."""
    folder = root / "origami"
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(80, 80), (120, 80), (80, 120), (48, 48)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        write(folder, f"p{i}", Image.fromarray(pixels), f"an origami figure {i}")
    write(folder, "uncaptioned", Image.new("RGB", (64, 64), "red"), None)
    write(folder, "broken", None, "a broken file")
    return folder


def test_pictures_of_mixed_sizes_are_cropped_to_their_centre_square(tmp_path):
    folder = picture_folder(tmp_path)
    pictures, skipped = load_pictures(folder, 64)
    assert [c for _, c in pictures] == [f"an origami figure {i}" for i in range(4)]
    assert all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p, _ in pictures)
    wide = np.asarray(Image.open(folder / "p1.png"))

    def error(x0: int) -> float:  # mean abs difference to the 80 x 80 square of the 120 x 80 picture at column x0
        crop = Image.fromarray(wide[:, x0 : x0 + 80]).resize((64, 64), Image.Resampling.LANCZOS)
        return float(np.abs(pictures[1][0].astype(float) - np.asarray(crop)).mean())

    assert error(20) < 3 < 30 < error(0)  # the centre (up to resampling at the crop's edges), not the left side
    assert sorted(Path(s.path).name for s in skipped) == ["broken.png", "uncaptioned.png"]


def test_style_lora_trains_on_a_folder_of_your_pictures(tmp_path, tiny_base, capsys):
    """The documented command on a made folder: the LoRA learns the pictures (same noise and t before and after)."""
    folder = picture_folder(tmp_path)
    out = tmp_path / "style.safetensors"
    args = ["--images", str(folder), "--base", tiny_base, "--out", str(out), "--resolution", "64"]
    style_lora.main([*args, "--steps", "30", "--batch-size", "2", "--lr", "3e-3"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["domain"] == "origami" and (result["pictures"], result["skipped"]) == (4, 2)
    assert result["fixed_loss_after"] < result["fixed_loss_before"]
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert any("lora_A" in k for k in f.keys())


def test_style_lora_refuses_a_folder_with_nothing_usable_and_strict_skips(tmp_path, capsys):
    empty = tmp_path / "empty"
    write(empty, "a", Image.new("RGB", (32, 32)), None)  # a picture without caption
    with pytest.raises(SystemExit, match="no usable picture in .*a same-name .txt caption"):
        style_lora.main(["--images", str(empty), "--out", str(tmp_path / "x.safetensors")])
    with pytest.raises(SystemExit, match="--strict: .*broken.png: unreadable image"):
        style_lora.main(
            ["--images", str(picture_folder(tmp_path)), "--strict", "--out", str(tmp_path / "x.safetensors")]
        )
    with pytest.raises(SystemExit) as refused:
        style_lora.main(["--images", str(tmp_path / "missing"), "--out", str(tmp_path / "x.safetensors")])
    assert refused.value.code == 2 and "argument --images: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
