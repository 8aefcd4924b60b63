"""`python -m pm_lightning.generate` / `pm_lightning.adapt` on the tiny Flux: outputs, stock-diffusers parity, ReCraft,
adaptive steps through the real stage-2 insertion, and the defaults read from the tiny experiment configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pm_lightning import adapt, generate
from pm_lightning.core.errors import BadInput
from pm_lightning.core.paths import portable, project_home
from pm_lightning.inference.session import grid_resolution, stage_file
from pm_lightning.inference.step_texts import corpus_vocabulary
from pm_lightning.inference.tiny_defaults import default_lora
from tests.test_adaptive import needs_tiny_eval

PROMPT = "a lego tower of three red bricks"
FAST = ["--num-inference-steps", "2", "--resolution", "96"]  # 3x3 grids of 32-px frames


@pytest.fixture(scope="module")
def lora_file(tiny_base, tmp_path_factory):
    """A random (non-zero) diffusers-format LoRA over the tiny transformer's attention projections."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(0)
    t = FluxTransformer2DModel.from_pretrained(tiny_base, subfolder="transformer")
    t.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora")
    FluxPipeline.save_lora_weights(
        out, transformer_lora_layers=get_peft_model_state_dict(t), weight_name="lora.safetensors"
    )
    return out / "lora.safetensors"


@pytest.fixture(scope="module")
def generated(tiny_base, lora_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "lego"
    generate.main(
        [
            "--base",
            tiny_base,
            "--stage1",
            str(lora_file),
            "--prompt",
            PROMPT,
            "--domain",
            "lego",
            "--seed",
            "7",
            *FAST,
            "--steps",
            *[f"brick {k}" for k in range(1, 10)],
            "--out",
            str(out),
        ]
    )
    return out


def stock_grid(tiny_base, lora_file, report: dict) -> np.ndarray:
    """The same grid from a FluxPipeline loaded here with stock diffusers calls only."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_base)
    pipe.set_progress_bar_config(disable=True)
    if lora_file is not None:
        pipe.load_lora_weights(str(lora_file))
    s = report["settings"]
    image = pipe(
        prompt=report["prompt"],
        height=s["resolution"],
        width=s["resolution"],
        num_inference_steps=s["num_inference_steps"],
        guidance_scale=s["guidance"],
        generator=torch.Generator("cpu").manual_seed(report["seed"]),
        max_sequence_length=s["max_sequence_length"],
    ).images[0]
    return np.asarray(image)


def test_generate_writes_every_output(generated):
    report = json.loads((generated / "report.json").read_text())
    assert (report["prompt"], report["domain"], report["seed"], report["adaptive"]) == (PROMPT, "lego", 7, None)
    assert report["settings"]["resolution"] == 96 and report["models"]["stage1"].endswith("lora.safetensors")
    grid = Image.open(generated / "grid.png")
    frames = sorted((generated / "frames").iterdir())
    assert grid.size == (96, 96) and [f.name for f in frames] == [f"{k:02d}.png" for k in range(9)]
    assert all(Image.open(f).size == (32, 32) for f in frames)
    gif = Image.open(generated / "sequence.gif")
    assert gif.n_frames == 9
    page = (generated / "index.html").read_text()
    assert "brick 1" in page and "brick 9" in page and "frames/08.png" in page


def test_same_seed_in_stock_diffusers_gives_the_same_grid(generated, tiny_base, lora_file):
    report = json.loads((generated / "report.json").read_text())
    ours = np.asarray(Image.open(generated / "grid.png").convert("RGB"))
    assert np.array_equal(ours, stock_grid(tiny_base, lora_file, report))  # identical pixels
    assert not np.array_equal(ours, stock_grid(tiny_base, None, report))  # and the LoRA matters


def test_recraft_from_a_finished_image(tiny_base, tmp_path):
    from pm_lightning.data.synthetic_corpus import generate_sequence

    seq = generate_sequence("cake", 3, 32)
    seq.frames[-1].save(tmp_path / "cake.png")
    out = tmp_path / "recraft"
    generate.main(
        [
            "--base",
            tiny_base,
            "--prompt",
            seq.caption,
            "--image",
            str(tmp_path / "cake.png"),
            "--frames",
            "4",
            "--num-inference-steps",
            "2",
            "--resolution",
            "64",
            "--out",
            str(out),
        ]
    )
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "recraft" and report["settings"]["frames"] == 4
    assert any("ReCraft" in n and "plain base" in n for n in report["notes"])
    assert len(list((out / "frames").iterdir())) == 4 and Image.open(out / "grid.png").size == (64, 64)


def test_bad_steps_count_is_refused(tiny_base, tmp_path):
    with pytest.raises(SystemExit, match="one per frame"):
        generate.main(["--base", tiny_base, "--prompt", "x", "--steps", "a", "b", "--out", str(tmp_path)])


@needs_tiny_eval
def test_adapt_inserts_into_a_gap_through_the_real_stage2_path(tiny_base, lora_file, tmp_path):
    from pm_lightning.data.synthetic_corpus import generate_sequence, sequence_seed

    seq = generate_sequence("garden", sequence_seed(1, "garden", 0), 64)
    (tmp_path / "gap").mkdir()
    for k, frame in enumerate(seq.frames[:7] + seq.frames[8:]):
        frame.save(tmp_path / "gap" / f"{k:02d}.png")
    (tmp_path / "gap" / "meta.json").write_text(json.dumps({"caption": seq.caption}))  # no step texts
    out = tmp_path / "adapted"
    adapt.main(
        [
            "--frames",
            str(tmp_path / "gap"),
            "--base",
            tiny_base,
            "--stage2",
            str(lora_file),
            "--max-rounds",
            "1",
            "--add-floor",  # no absolute floor, no deletion: the largest jump of the sequence gets a frame
            "0.01",
            "--del-ceiling",
            "0.0",
            "--k1",
            "1.0",
            "--num-inference-steps",
            "2",
            "--out",
            str(out),
        ]
    )
    report = json.loads((out / "report.json").read_text())
    assert report["prompt"] == seq.caption and report["adaptive"]["sem_dropped"]
    settings = report["settings"]  # generate's report writer: the same settings
    assert (report["mode"], settings["adaptive"], report["input"][-3:]) == ("adapt", True, "gap")
    assert settings["num_inference_steps"] == 2 and settings["cache"]["mode"] == "none"
    rnd = report["adaptive"]["rounds"][0]
    assert {"mu", "sigma", "tau_add", "tau_del", "add", "delete", "add_floor", "del_ceiling"} <= set(rnd["thresholds"])
    inserts = [d for d in rnd["decisions"] if d["applied"] and d["action"] == "insert"]
    deltas = [p["delta"] for p in rnd["pairs"]]
    largest = max(range(len(deltas)), key=deltas.__getitem__)
    assert inserts and largest in [d["pair"] for d in inserts]  # the largest jump above mu + sigma got frames
    frames = sorted((out / "frames").iterdir())
    added = sum(d["n"] for d in inserts)
    assert len(frames) == 8 + added and all(Image.open(f).size == (64, 64) for f in frames)
    assert f"inserted between {largest} and {largest + 1}" in (out / "index.html").read_text()


def test_tiny_defaults_follow_the_experiment_configs(tmp_path):
    assert default_lora("stage1", "lego") == project_home() / "runs/tiny/lora/final/lego.safetensors"
    assert default_lora("stage1", "mosaic") == project_home() / "runs/tiny/lora/final/unseen.safetensors"
    assert default_lora("stage1", None) == project_home() / "runs/tiny/lora/final/unseen.safetensors"
    assert default_lora("stage2") == project_home() / "runs/tiny_stage2/lora/final/lora.safetensors"
    assert default_lora("recraft") == project_home() / "runs/tiny_recraft/lora/final/lora.safetensors"
    assert (grid_resolution("tiny", 9), grid_resolution("tiny", 4)) == (192, 192)
    assert (grid_resolution("flux-dev", 9), grid_resolution("flux-dev", 4)) == (1056, 1024)
    notes: list[str] = []
    assert stage_file(None, tmp_path / "missing.safetensors", "stage-1", "make train-stage1", notes) is None
    assert "make train-stage1" in notes[0] and "plain base" in notes[0]
    with pytest.raises(BadInput, match="not found"):
        stage_file(tmp_path / "nope.safetensors", None, "stage-1", "make train-stage1", [])


@needs_tiny_eval
def test_generate_adaptive_switches_from_the_stage1_to_the_stage2_lora(tiny_base, lora_file, tmp_path):
    out = tmp_path / "adaptive"
    generate.main(
        [
            "--base",
            tiny_base,
            "--stage1",
            str(lora_file),
            "--stage2",
            str(lora_file),
            "--prompt",
            PROMPT,
            *FAST,
            "--adaptive",
            "--max-rounds",
            "1",
            "--add-floor",
            "0.001",
            "--del-ceiling",
            "0",
            "--k1",  # tau_add = mu: the largest jump is above it whatever the evaluators' calibration says
            "0",
            "--out",
            str(out),
        ]
    )
    report = json.loads((out / "report.json").read_text())
    rnd = report["adaptive"]["rounds"][0]
    # no --steps: each frame's step text is retrieved from the corpus vocabulary by the tiny CLIP, so Delta_sem is
    # kept (before issue 25 this run dropped it: "no step texts: Delta_sem dropped")
    texts = report["adaptive"]["step_texts"]
    assert texts == {"source": "retrieved from the corpus vocabulary", "clip": "tiny", "vocabulary": len(corpus_vocabulary(None)), "vocabulary_of": "every training domain"}  # fmt: skip
    assert not report["adaptive"]["sem_dropped"] and rnd["weights"]["sem"] > 0 and len(rnd["pairs"]) == 8
    inputs = [f["text"] for f in report["adaptive"]["final_frames"] if f["source"] == "input"]
    assert len(inputs) == 9 and set(inputs) <= set(corpus_vocabulary(None)) and report["steps"] is None
    applied = [d for d in rnd["decisions"] if d["applied"]]
    assert applied and all(d["action"] == "insert" for d in applied)  # guards off: the relative bar fires
    n = 9 + sum(d["n"] for d in applied)
    assert len(report["adaptive"]["final_frames"]) == n == len(list((out / "frames").iterdir()))
    assert report["adaptive"]["models"]["stage2"] == report["models"]["stage1"] == portable(lora_file)
    assert str(lora_file.parent) not in (out / "report.json").read_text()  # no absolute local path in the report


@pytest.mark.parametrize("cache", ["first-block", "taylorseer"])
def test_generate_with_a_step_cache_records_it(tiny_base, lora_file, tmp_path, cache):
    """The cache switch reaches the stock pipeline call with a diffusers LoRA loaded, and the report says so."""
    out = tmp_path / cache
    args = ["--base", tiny_base, "--stage1", str(lora_file), "--prompt", PROMPT, "--num-inference-steps", "6"]
    generate.main([*args, "--resolution", "96", "--cache", cache, "--cache-warmup", "2", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["cache"]["mode"] == cache and (out / "grid.png").is_file()
    generate.main([*args, "--resolution", "96", "--out", str(tmp_path / "plain")])
    assert not np.array_equal(
        np.asarray(Image.open(out / "grid.png")), np.asarray(Image.open(tmp_path / "plain" / "grid.png"))
    )
