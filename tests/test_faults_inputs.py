"""Bad input through every entry point that reads it: a clear error naming the file and the fix, or skipped and
counted; never a traceback from deep inside a library, never work lost. The catalogue: docs/RELIABILITY.md."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from pm_lightning import adapt, evaluate, fit, generate
from pm_lightning.shards import main as shards_main
from tests.test_adaptive import needs_tiny_eval
from tests.test_fit import small_config
from tests.test_generate import lora_file  # noqa: F401 - fixture
from tests.test_shards import colour, make_sequence

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
UNICODE_LONG = "un gâteau 🎂 rose, étape par étape — " + "très " * 1200  # ~7,000 characters


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A few-hundred-byte PNG that claims w x h pixels: a decompression bomb if it were ever decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def bad_images(tmp_path: Path) -> dict[str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "tiny.png")
    torch.save({"x": torch.ones(2)}, tmp_path / "pickle.png")
    return {
        "corrupt": tmp_path / "corrupt.png",
        "bomb": png_header_only(tmp_path / "bomb.png", 30000, 30000),
        "tiny": tmp_path / "tiny.png",
        "pickle": tmp_path / "pickle.png",
    }


def quick_generate(tiny_base: str, out: Path, *args: str) -> int:
    """`python -m pm_lightning.generate` on the tiny base: 2x2 grids of 32 px, one sampler step."""
    fast = ["--frames", "4", "--num-inference-steps", "1", "--resolution", "64", "--out", str(out)]
    return generate.main(["--base", tiny_base, *args, *fast])


EXPECT = {
    "corrupt": "not a readable image",
    "bomb": "decompression bomb",
    "tiny": "at least 16 px",
    "pickle": "not a readable image",
}


# ------------------------------------------------------------------------------------------- shards


def test_shards_skip_and_count_bombs_and_empty_captions_and_keep_unicode_and_tiny_frames(tmp_path, capsys):
    """Shards resize every frame to --size, so tiny and non-square frames are data (padded, resized); a bomb and a
    blank caption are skipped and counted."""
    raw, good = tmp_path / "raw", [colour(0, 0, k) for k in range(4)]
    bomb = make_sequence(raw, "clay", "bomb", good)
    png_header_only(bomb / "frame_1.png", 30000, 30000)
    make_sequence(raw, "clay", "tiny", good, size=(8, 8))
    make_sequence(raw, "clay", "blank", good, caption="   ")
    make_sequence(raw, "clay", "unicode", good, caption=UNICODE_LONG)
    assert shards_main(["--src", str(raw), "--out", str(tmp_path / "out"), "--size", "32", "--workers", "1"]) == 0
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    reasons = {
        Path(s["path"]).name if "frame" in s["path"] else Path(s["path"]).name: s["reason"] for s in index["skipped"]
    }
    assert index["total"] == 2 and index["skipped_count"] == 2, index["skipped"]
    assert "decompression bomb" in reasons["frame_1.png"] and "missing caption" in reasons["blank"]
    import webdataset as wds

    captions = {
        json.loads(s["json"])["caption"]
        for s in wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False)
    }
    assert UNICODE_LONG.strip() in captions  # kept whole, byte for byte (surrounding blanks trimmed)
    assert str(bomb / "frame_1.png") in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- generate / adapt


@pytest.mark.parametrize("kind", list(EXPECT))
def test_generate_image_refuses_a_bad_image_naming_it(tmp_path, tiny_base, kind):
    image = bad_images(tmp_path)[kind]
    with pytest.raises(SystemExit, match=EXPECT[kind]) as err:
        quick_generate(tiny_base, tmp_path / "out", "--prompt", "a cake", "--image", str(image))
    assert str(image) in str(err.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", list(EXPECT))
def test_adapt_refuses_a_bad_frame_naming_it(tmp_path, tiny_base, kind):
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(3):
        Image.new("RGB", (32, 32), colour(0, 0, k)).save(frames / f"{k:02d}.png")
    bad = bad_images(tmp_path / "bad")[kind]
    (frames / "01.png").write_bytes(bad.read_bytes())
    with pytest.raises(SystemExit, match=EXPECT[kind]) as err:
        adapt.main(["--base", tiny_base, "--frames", str(frames), "--out", str(tmp_path / "out")])
    assert str(frames / "01.png") in str(err.value)


def test_adapt_refuses_a_broken_meta_json(tmp_path, tiny_base):
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(3):
        Image.new("RGB", (32, 32), colour(0, 0, k)).save(frames / f"{k:02d}.png")
    (frames / "meta.json").write_text("{not json")
    with pytest.raises(SystemExit, match="meta.json is not valid JSON"):
        adapt.main(["--base", tiny_base, "--frames", str(frames), "--out", str(tmp_path / "out")])


def frames_in_other_forms(folder: Path) -> Path:
    """Four frames of one sequence: RGB 64 px, grayscale, RGBA on a transparent canvas, RGB at 96x80 px."""
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), colour(0, 0, 0)).save(folder / "00.png")
    Image.new("RGB", (64, 64), colour(0, 0, 1)).convert("L").save(folder / "01.png")
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (32, 32), (*colour(0, 0, 2), 255)), (16, 16))
    rgba.save(folder / "02.png")
    Image.new("RGB", (96, 80), colour(0, 0, 3)).save(folder / "03.png")
    return folder


@needs_tiny_eval
def test_adapt_takes_gray_rgba_and_mixed_size_frames_and_reports_the_conversion(tmp_path, tiny_base, lora_file):  # noqa: F811
    frames, out = frames_in_other_forms(tmp_path / "frames"), tmp_path / "out"
    args = ["--base", tiny_base, "--stage2", str(lora_file), "--frames", str(frames), "--out", str(out)]
    no_edit = ["--max-rounds", "1", "--add-floor", "100", "--del-ceiling", "0"]  # the frames come out as read
    assert adapt.main([*args, *no_edit, "--num-inference-steps", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["adaptive"]["input_conversions"] == ["frame 3: 96x80 -> 64x64"]
    assert all(Image.open(f).size == (64, 64) for f in (out / "frames").iterdir())
    transparent = Image.open(out / "frames" / "02.png").convert("RGB")
    assert transparent.getpixel((0, 0)) == (255, 255, 255)  # transparency over white, as docs/RELIABILITY.md says


def test_adapt_refuses_one_frame_and_a_step_count_that_does_not_match(tmp_path, tiny_base):
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (32, 32), "red").save(one / "00.png")
    with pytest.raises(SystemExit, match="need at least two frame images, found 1"):
        adapt.main(["--base", tiny_base, "--frames", str(one), "--out", str(tmp_path / "out1")])
    three = frames_in_other_forms(tmp_path / "three")
    (three / "meta.json").write_text(json.dumps({"caption": "blocks", "steps": ["a", "b", "c"]}))
    with pytest.raises(SystemExit, match="3 step texts for 4 frames: give one per frame"):
        adapt.main(["--base", tiny_base, "--frames", str(three), "--out", str(tmp_path / "out2")])
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_generate_with_a_unicode_long_prompt_and_an_unknown_domain_works(tmp_path, tiny_base):
    out = tmp_path / "out"
    assert quick_generate(tiny_base, out, "--prompt", UNICODE_LONG, "--domain", "ceramics") == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["prompt"] == UNICODE_LONG and report["domain"] == "ceramics"


# ------------------------------------------------------------------------------------------- LoRA files


def other_base_lora(tmp_path: Path) -> Path:
    """A valid diffusers LoRA for a transformer of another width (tests/helpers' tiny transformer)."""
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from tests.helpers import tiny_transformer

    t = tiny_transformer()
    t.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k"], init_lora_weights=False))
    FluxPipeline.save_lora_weights(
        tmp_path, transformer_lora_layers=get_peft_model_state_dict(t), weight_name="other.safetensors"
    )
    return tmp_path / "other.safetensors"


@pytest.mark.parametrize("kind", ["pickle", "other-base", "no-lora"])
def test_generate_refuses_a_lora_file_that_does_not_fit(tmp_path, tiny_base, kind):
    if kind == "pickle":
        lora = tmp_path / "lora.safetensors"
        torch.save({"transformer.x.lora_A.weight": torch.ones(2, 2)}, lora)
        expect = "not a safetensors file"
    elif kind == "other-base":
        lora, expect = other_base_lora(tmp_path), "does not fit this base model"
    else:
        from safetensors.torch import save_file

        lora, expect = tmp_path / "weights.safetensors", "holds no LoRA tensors"
        save_file({"w": torch.ones(2)}, lora)
    with pytest.raises(SystemExit, match=expect) as err:
        quick_generate(tiny_base, tmp_path / "out", "--stage1", str(lora), "--prompt", "a cake")
    assert str(lora) in str(err.value)


# ------------------------------------------------------------------------------------------- fit


def test_fit_refuses_a_bad_value_type_at_load_naming_the_key(capsys):
    with pytest.raises(SystemExit):
        fit.main(["--config", "experiments/tiny.yaml", "--model.init_args.adapter.rank", "sixteen"])
    assert "rank" in capsys.readouterr().err


@pytest.mark.parametrize(("change", "expect"), [({"stage": 2}, "stage-2 checkpoint"), ({"adapter.rank": 8}, "rank=8")])
def test_fit_refuses_a_checkpoint_of_another_stage_or_adapter(tmp_path, tiny_base, tiny_shards, capsys, change, expect):
    cfg = small_config(tmp_path / "a", tiny_base, tiny_shards, max_steps=1, every=1)
    assert fit.main(["--config", str(cfg)]) == 0
    ckpt = torch.load(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for key, value in change.items():
        *path, leaf = key.split(".")
        target = ckpt["hyper_parameters"]
        for p in path:
            target = target[p]
        target[leaf] = value
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    fresh = small_config(tmp_path / "b", tiny_base, tiny_shards, max_steps=2, every=1)
    assert fit.main(["--config", str(fresh), "--ckpt_path", str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and expect in err
    assert not (tmp_path / "b" / "run" / "checkpoints").exists()  # nothing trained, nothing written


# ------------------------------------------------------------------------------------------- evaluate


@needs_tiny_eval
def test_evaluate_skips_and_counts_samples_with_bad_files(tmp_path):
    root = tmp_path / "samples"
    for name, frame_bytes, report in [
        ("good", None, {"prompt": "a cake", "domain": "cake"}),
        ("corrupt", b"not an image", {"prompt": "a cake", "domain": "cake"}),
        ("noprompt", None, {"domain": "cake"}),
        ("badjson", None, None),
    ]:
        folder = root / name
        (folder / "frames").mkdir(parents=True)
        Image.new("RGB", (64, 64), "white").save(folder / "grid.png")
        for k in range(4):
            Image.new("RGB", (32, 32), colour(0, 0, k)).save(folder / "frames" / f"{k:02d}.png")
        if frame_bytes is not None:
            (folder / "frames" / "01.png").write_bytes(frame_bytes)
        (folder / "report.json").write_text(json.dumps(report) if report is not None else "{broken")
    results = evaluate.main(["--samples", str(root), "--out", str(tmp_path / "results.json")])
    skipped = {Path(s["sample"]).name: s["reason"] for s in results["skipped"]}
    assert [r["domain"] for r in results["samples"]] == ["cake"] and set(skipped) == {"corrupt", "noprompt", "badjson"}
    assert "not a readable image" in skipped["corrupt"] and "prompt" in skipped["noprompt"]
    assert "not valid JSON" in skipped["badjson"]


@needs_tiny_eval
def test_evaluate_scores_gray_rgba_mixed_size_and_one_frame_samples(tmp_path):
    root = tmp_path / "samples"
    frames_in_other_forms(root / "mixed" / "frames")
    (root / "one" / "frames").mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").convert("L").save(root / "one" / "frames" / "00.png")
    for name in ("mixed", "one"):
        Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(root / name / "grid.png")
        (root / name / "report.json").write_text(json.dumps({"prompt": "blocks", "domain": "toy"}))
    results = evaluate.main(["--samples", str(root), "--out", str(tmp_path / "results.json")])
    rows = {Path(r["sample"]).name: r for r in results["samples"]}
    assert not results["skipped"] and rows["mixed"]["frames"] == 4 and rows["one"]["frames"] == 1
    assert rows["mixed"]["monotonicity_clip"] is not None and rows["one"]["monotonicity_clip"] is None  # n/a, not 0
