"""Export folders for the Hub: every format, a model card huggingface_hub reads back, the sample grid, the push."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from pm_lightning.export import main
from pm_lightning.models.model_card import base_repo
from tests.test_export import DOMAINS, make_checkpoint


def run_with_samples(tmp_path):
    """A checkpoint at <run>/checkpoints/last.ckpt with the run's sample sheet at <run>/samples/final.png."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    make_checkpoint(run / "checkpoints", "masked")
    (run / "samples").mkdir()
    Image.new("RGB", (32, 16), (200, 30, 30)).save(run / "samples" / "final.png")
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("fmt, suffix", [("diffusers", ".safetensors"), ("kohya", ".kohya.safetensors")])
def test_all_domains_to_a_folder_with_a_card(tmp_path, fmt, suffix):
    ckpt = run_with_samples(tmp_path)
    out = tmp_path / "hub"
    main(["--ckpt", str(ckpt), "--domain", "all", "--out", str(out), "--format", fmt, "--dtype", "bfloat16"])
    for name in [*DOMAINS, "unseen"]:
        tensors = load_file(str(out / f"{name}{suffix}"))
        assert tensors and all(str(v.dtype) == "torch.bfloat16" for v in tensors.values())
        assert all(k.startswith("lora_unet_" if fmt == "kohya" else "transformer.") for k in tensors)
    card = ModelCard.load(out / "README.md")  # huggingface_hub's own parser
    meta = card.data.to_dict()
    assert {"lora", "flux", "procedural-generation"} <= set(meta["tags"])
    assert meta["instance_prompt"] == ", ".join(DOMAINS)
    assert meta["widget"][0]["output"]["url"] == "images/samples.png"
    assert Image.open(out / "images" / "samples.png").getpixel((0, 0)) == (200, 30, 30)
    for name in [*DOMAINS, "unseen"]:
        assert f"`{name}{suffix}`" in card.text
    assert "| adapter | masked LoRA, rank 4" in card.text


def test_one_file_gets_a_card_in_its_folder(tmp_path):
    make_checkpoint(tmp_path, "masked")
    out = tmp_path / "single" / "lego.safetensors"
    main(["--ckpt", str(tmp_path / "last.ckpt"), "--domain", "lego", "--out", str(out)])
    card = ModelCard.load(out.parent / "README.md")
    assert "`lego.safetensors`" in card.text and "`clay" not in card.text
    assert "widget" not in card.data.to_dict()  # no samples in this run: no picture promised
    with pytest.raises(SystemExit, match="is one file, but 3 domains"):
        main(["--ckpt", str(tmp_path / "last.ckpt"), "--domain", "all", "--out", str(out)])


def test_base_model_metadata():
    assert base_repo("flux-dev") == "black-forest-labs/FLUX.1-dev"
    assert base_repo("black-forest-labs/FLUX.1-schnell") == "black-forest-labs/FLUX.1-schnell"
    assert base_repo("tiny") is None  # the embedded model is no Hub repo


def test_push_without_credentials_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login
    make_checkpoint(tmp_path, "masked")
    out = tmp_path / "hub"
    with pytest.raises(SystemExit) as err:
        main(["--ckpt", str(tmp_path / "last.ckpt"), "--domain", "all", "--out", str(out), "--push-to-hub", "me/x"])
    message = str(err.value)
    assert "hf auth login" in message and "HF_TOKEN" in message and f"hf upload me/x {out} ." in message
    assert (out / "README.md").is_file() and (out / "lego.safetensors").is_file()  # the folder is kept, complete
    assert "wrote" in capsys.readouterr().out


def test_push_network_failure_keeps_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_test")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: a connection error
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    from pm_lightning.models.publish import PushFailed, push_folder

    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "README.md").write_text("x")
    with pytest.raises(PushFailed, match="failed .*the folder is intact"):
        push_folder(tmp_path / "f", "me/x")


def test_training_run_exports_a_card_with_its_samples_and_kohya_files(tmp_path, tiny_base, tiny_shards):
    import yaml

    from pm_lightning import fit
    from tests.test_fit import small_config, with_outputs

    cfg_path = with_outputs(small_config(tmp_path, tiny_base, tiny_shards, max_steps=1, every=1), every=1)
    cfg = yaml.safe_load(cfg_path.read_text())
    export = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("LoraExport"))
    export["init_args"] = {"formats": ["diffusers", "kohya"]}
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert fit.main(["--config", str(cfg_path)]) == 0
    final = tmp_path / "run" / "lora" / "final"
    card = ModelCard.load(final / "README.md")
    assert card.data.to_dict()["widget"][0]["output"]["url"] == "images/samples.png"
    assert (final / "images" / "samples.png").is_file()
    for name in ("lego", "unseen"):
        assert f"`{name}.safetensors`" in card.text and f"`{name}.kohya.safetensors`" in card.text
        assert (final / f"{name}.kohya.safetensors").is_file()
    assert "| training steps | 1 |" in card.text
