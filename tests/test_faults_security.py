"""No untrusted pickle: checkpoints a user passes in are read with weights_only=True; a malicious payload never runs."""

from __future__ import annotations

import pathlib

import pytest
import torch

from pm_lightning import export, fit
from tests.test_fit import small_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


class Payload:
    """Unpickling this calls Path.touch(marker): code execution, if a loader allows arbitrary objects."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def evil_checkpoint(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    marker, path = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"adapter": Payload(marker)}}, path)
    return path, marker


def test_the_payload_would_run_under_a_plain_load(tmp_path):
    """The control: the file really carries code."""
    path, marker = evil_checkpoint(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_export_refuses_a_malicious_checkpoint_unread(tmp_path):
    path, marker = evil_checkpoint(tmp_path)
    with pytest.raises(SystemExit, match="objects other than tensors and plain data"):
        export.main(["--ckpt", str(path), "--domain", "lego", "--out", str(tmp_path / "x.safetensors")])
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


def test_fit_refuses_to_resume_from_a_malicious_checkpoint(tmp_path, tiny_base, tiny_shards, capsys):
    path, marker = evil_checkpoint(tmp_path)
    cfg = small_config(tmp_path / "c", tiny_base, tiny_shards, max_steps=1)
    assert fit.main(["--config", str(cfg), "--ckpt_path", str(path)]) == 2
    assert not marker.exists() and "refused unread" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_export_names_a_damaged_checkpoint(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(SystemExit, match="bad.ckpt"):
        export.main(["--ckpt", str(path), "--domain", "lego", "--out", str(tmp_path / "x.safetensors")])


def test_api_keys_reach_no_file_of_a_run(tmp_path, tiny_base, tiny_shards, monkeypatch):
    """W&B and judge keys in the environment: nothing the run writes (config, checkpoints, W&B files) holds them."""
    import yaml

    wandb_key, openai_key = "wandbsecret" + "7" * 29, "sk-openaisecret" + "9" * 20
    monkeypatch.setenv("WANDB_API_KEY", wandb_key)
    monkeypatch.setenv("OPENAI_API_KEY", openai_key)
    path = small_config(tmp_path, tiny_base, tiny_shards, max_steps=1, every=1)
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"]["logger"] = {
        "class_path": "pm_lightning.training.wandb_logger.AutoWandbLogger",
        "init_args": {"project": "pm_tests", "offline": True},
    }
    path.write_text(yaml.safe_dump(cfg))
    assert fit.main(["--config", str(path)]) == 0
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files) and any(p.suffix == ".ckpt" for p in files)
    for p in files:
        data = p.read_bytes()
        assert wandb_key.encode() not in data and openai_key.encode() not in data, p
