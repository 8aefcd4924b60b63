"""Export folders for the Hub: every format, a model card huggingface_hub reads back, the sample grid, the push."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_one_file_gets_its_own_card_beside_it_and_the_users_readme_stays(tmp_path):
    """The command's own example in a folder holding the user's README.md: the card is `lego.README.md`."""
    ckpt = run_with_samples(tmp_path)
    single = tmp_path / "single"
    single.mkdir()
    (single / "README.md").write_text("my notes\n")
    out = single / "lego.safetensors"
    main(["--ckpt", str(ckpt), "--domain", "lego", "--out", str(out)])
    assert (single / "README.md").read_text() == "my notes\n"
    card = ModelCard.load(single / "lego.README.md")
    assert "`lego.safetensors`" in card.text and "`clay" not in card.text
    assert card.data.to_dict()["widget"][0]["output"]["url"] == "lego.samples.png"
    assert sorted(p.name for p in single.iterdir()) == [
        ".pm_export.json", "README.md", "lego.README.md", "lego.safetensors", "lego.samples.png"
    ]  # fmt: skip
    main(["--ckpt", str(ckpt), "--domain", "lego", "--out", str(out)])  # its own files: replaced, no refusal
    with pytest.raises(SystemExit, match="is one file, but 3 domains"):
        main(["--ckpt", str(ckpt), "--domain", "all", "--out", str(out)])


def test_a_folder_export_never_replaces_a_file_it_did_not_write(tmp_path):
    make_checkpoint(tmp_path, "masked")
    out = tmp_path / "hub"
    out.mkdir()
    (out / "README.md").write_text("the user's own readme\n")
    before = listing(out)
    with pytest.raises(SystemExit, match=r"already holds \['README.md'\].*nothing was written") as err:
        main(["--ckpt", str(tmp_path / "last.ckpt"), "--domain", "all", "--out", str(out)])
    assert err.value.code == 2 and listing(out) == before
    (out / "README.md").unlink()
    main(["--ckpt", str(tmp_path / "last.ckpt"), "--domain", "all", "--out", str(out)])
    (out / "lego.safetensors").write_bytes(b"changed by hand")  # no longer what the export wrote: kept
    with pytest.raises(SystemExit, match=r"already holds \['lego.safetensors'\]"):
        main(["--ckpt", str(tmp_path / "last.ckpt"), "--domain", "all", "--out", str(out)])
    assert (out / "lego.safetensors").read_bytes() == b"changed by hand"


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", ".hidden", "..", "x" * 101])
def test_domain_names_from_a_checkpoint_never_become_paths(tmp_path, name):
    make_checkpoint(tmp_path, "masked")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["domains"] = ["lego", name]
    torch.save(ckpt, tmp_path / "evil.ckpt")
    out = tmp_path / "a" / "b" / "hub"
    with pytest.raises(SystemExit, match="not plain file names"):
        main(["--ckpt", str(tmp_path / "evil.ckpt"), "--domain", "all", "--out", str(out)])
    assert not (tmp_path / "a").exists() and not Path("/tmp/abs.safetensors").exists()


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
    assert "hf auth login" in message and "HF_TOKEN" in message and f"hf upload me/x {out} . --include" in message
    assert (out / "README.md").is_file() and (out / "lego.safetensors").is_file()  # the folder is kept, complete
    assert "wrote" in capsys.readouterr().out


def test_push_network_failure_keeps_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_test")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: a connection error
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    from pm_lightning.models.publish import PushFailed, push_folder

    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "README.md").write_text("x")
    with pytest.raises(PushFailed, match="holds no files written by"):  # not an export folder: nothing sent
        push_folder(tmp_path / "f", "me/x")
    (tmp_path / "f" / ".pm_export.json").write_text('{"README.md": "0"}')
    with pytest.raises(PushFailed, match="failed .*the folder is intact"):
        push_folder(tmp_path / "f", "me/x")


def test_a_push_sends_only_the_files_the_export_wrote(tmp_path, monkeypatch):
    """`.env` and the user's other files beside the export are never sent: upload_folder gets an allow-list, applied
    here by huggingface_hub's own filter (the network part is replaced)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    sent = {}

    def upload_folder(self, *, folder_path, repo_id, repo_type, allow_patterns=None, ignore_patterns=None, **kw):
        files = [str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()]
        sent["files"] = sorted(
            filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        )
        return "https://hub.example/me/x/commit/1"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_fake")
    ckpt = run_with_samples(tmp_path)
    out = tmp_path / "hub"
    out.mkdir()
    (out / ".env").write_text("HF_TOKEN=secret\n")
    (out / "notes.txt").write_text("private\n")
    main(["--ckpt", str(ckpt), "--domain", "all", "--out", str(out), "--push-to-hub", "me/x"])
    assert sent["files"] == sorted(["README.md", "images/samples.png", *(f"{d}.safetensors" for d in DOMAINS),
                                    "unseen.safetensors"])  # fmt: skip
    with pytest.raises(SystemExit, match="pushes a folder export") as err:
        main(["--ckpt", str(ckpt), "--domain", "lego", "--out", str(out / "x.safetensors"), "--push-to-hub", "me/x"])
    assert err.value.code == 2 and not (out / "x.safetensors").exists()


def test_cards_and_headers_hold_no_absolute_local_path(tmp_path, monkeypatch):
    from pm_lightning.models.lora_files import file_sha256, read_stage1_metadata

    monkeypatch.chdir(tmp_path)
    make_checkpoint(tmp_path, "lora")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    stage1 = tmp_path / "runs" / "s1" / "unseen.safetensors"
    stage1.parent.mkdir(parents=True)
    stage1.write_bytes(b"stage-1 weights")
    elsewhere = Path("/") / "opt" / "models" / "my-flux"
    ckpt["hyper_parameters"].update(stage1=str(stage1), stage1_sha256=file_sha256(stage1), base=str(tmp_path / "base"))
    torch.save(ckpt, tmp_path / "stage2.ckpt")
    main(["--ckpt", str(tmp_path / "stage2.ckpt"), "--domain", "all", "--out", "hub"])
    written = b"".join(p.read_bytes() for p in (tmp_path / "hub").rglob("*") if p.is_file())
    assert str(tmp_path).encode() not in written and str(elsewhere).encode() not in written
    assert read_stage1_metadata(tmp_path / "hub" / "lora.safetensors")[0] == "runs/s1/unseen.safetensors"
    assert "`runs/s1/unseen.safetensors`" in (tmp_path / "hub" / "README.md").read_text()


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
