"""Style-LoRA stacking (MakeAnything's unseen-domain route): a LoRA trained here on single pictures of a held-out
domain, stacked on the procedural LoRA through diffusers' multi-adapter weighting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pm_lightning.core.paths import portable
from pm_lightning.data.synthetic_corpus import HELDOUT_DOMAINS
from pm_lightning.inference.flags import extra_lora
from pm_lightning.inference.session import Models, sample_grid
from pm_lightning.training.style_trainer import StyleLoraConfig, style_pictures, train_style_lora
from tests.test_stage2 import stage1_file  # noqa: F401 - fixture

DOMAIN = HELDOUT_DOMAINS[0]


def test_extra_lora_flag(tmp_path, monkeypatch):
    import argparse

    monkeypatch.chdir(tmp_path)
    for name in ("b.safetensors", "C:x.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert extra_lora("b.safetensors:0.7") == (Path("b.safetensors"), 0.7)
    assert extra_lora("b.safetensors")[1] == 1.0
    assert extra_lora("C:x.safetensors") == (Path("C:x.safetensors"), 1.0)  # no number after the colon: the name
    for bad in ("b.safetensors:nan", "b.safetensors:inf", "missing.safetensors:0.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            extra_lora(bad)


def test_style_pictures_are_single_late_frames_of_the_domain():
    pics = style_pictures(DOMAIN, 6, 48, seed=0)
    again = style_pictures(DOMAIN, 6, 48, seed=0)
    assert len(pics) == 6 and all(p.shape == (48, 48, 3) and p.dtype == np.uint8 for p, _ in pics)
    assert all(np.array_equal(a, b) and c == d for (a, c), (b, d) in zip(pics, again))  # reproducible
    assert len({c for _, c in pics}) > 1  # different sequences, not one picture repeated


@pytest.fixture(scope="module")
def style_file(tiny_base, tmp_path_factory):
    from pm_lightning.models.backbone import FluxBackbone

    out = tmp_path_factory.mktemp("style") / f"{DOMAIN}.safetensors"
    cfg = StyleLoraConfig(DOMAIN, steps=40, batch_size=2, pictures=8, resolution=64, lr=3e-3)
    result = train_style_lora(FluxBackbone.from_pretrained(tiny_base), cfg, out, progress=False)
    assert result["fixed_loss_after"] < result["fixed_loss_before"]  # it learns the pictures (same noise and t)
    return out


def test_stacked_weights_scale_the_style_lora(tiny_base, stage1_file, style_file):  # noqa: F811
    models = Models(tiny_base)

    def grid(extras):
        image = sample_grid(models.use(None, stage1_file, extras), "an origami crane", 64, 4, 1.0, seed=5)
        return np.asarray(image, dtype=np.float32)

    plain = grid(())
    assert models.loaded == (str(stage1_file), ())
    zero, half, full = grid([(style_file, 0.0)]), grid([(style_file, 0.5)]), grid([(style_file, 1.0)])
    active = models.backbone.transformer.active_adapters()
    assert set(active) == {"pm", "extra0"}  # both adapters on at once, weighted
    assert np.abs(zero - plain).max() <= 1  # weight 0: the procedural LoRA alone (uint8 rounding at most)
    assert np.abs(full - plain).mean() > np.abs(half - plain).mean() > 0.5  # the weight scales the effect
    assert np.array_equal(grid(()), plain)  # unloading the extras restores the procedural LoRA exactly


def test_generate_records_the_extra_loras(tmp_path, tiny_base, stage1_file, style_file):  # noqa: F811
    import json

    from pm_lightning import generate

    out = tmp_path / "g"
    args = ["--base", tiny_base, "--prompt", "an origami crane", "--domain", DOMAIN, "--stage1", stage1_file]
    args += ["--extra-lora", f"{style_file}:0.8", "--num-inference-steps", "2", "--resolution", "64", "--out", str(out)]
    assert generate.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["models"]["extra_loras"] == [{"file": portable(style_file), "weight": 0.8}]
    with pytest.raises(SystemExit, match="no such file"):
        generate.main([*args[:-2], "--extra-lora", str(tmp_path / "missing.safetensors"), "--out", str(out)])


def test_a_failing_extra_lora_leaves_the_session_as_it_records(tiny_base, stage1_file, tmp_path):  # noqa: F811
    """The stage-1 LoRA loads, the extra file after it fails: the session unloads both, so the next plain-base request
    draws the plain base (checked red: without the unload in `Models.use` that grid is the stage-1 LoRA's)."""
    from pm_lightning.core.errors import BadInput

    models = Models(tiny_base)
    plain = np.asarray(sample_grid(models.use(None, None), "a lego tower", 64, 2, 1.0, seed=3))
    with_lora = np.asarray(sample_grid(models.use(None, stage1_file), "a lego tower", 64, 2, 1.0, seed=3))
    broken = tmp_path / "broken.safetensors"
    broken.write_text("not a LoRA file")
    with pytest.raises(BadInput, match="broken.safetensors"):
        models.use(None, stage1_file, [(broken, 0.5)])
    again = np.asarray(sample_grid(models.use(None, None), "a lego tower", 64, 2, 1.0, seed=3))
    assert not np.array_equal(plain, with_lora) and np.array_equal(again, plain) and models.loaded == (None, ())
