"""Per-domain LoRA export: stock FluxPipeline.load_lora_weights reproduces the framework's adapted output."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from diffusers import FluxPipeline
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from pm_lightning.export import main
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_routing import use_domains
from pm_lightning.models.adapters import add_adapters
from pm_lightning.models.lora_files import adapter_tensors
from tests.helpers import bare_pipeline, random_inputs, tiny_transformer
from tests.test_adapters import randomize

DOMAINS = ["lego", "clay"]


def make_checkpoint(tmp_path, kind: str):
    """A trained-looking tiny adapter, its base saved as a pipeline dir, and a Lightning-style checkpoint."""
    tiny_transformer(0).save_pretrained(tmp_path / "base" / "transformer")
    m = tiny_transformer(0)
    cfg = AdapterConfig(kind=kind, rank=4, alpha=8.0, num_domains=len(DOMAINS))
    add_adapters(m, cfg)
    randomize(m)
    state = {f"model.transformer.{k}": v for k, v in m.state_dict().items() if ".lora_" in k}
    state["model.other.weight"] = torch.zeros(1)  # ignored: not an adapter tensor
    hp = {"adapter": asdict(cfg), "domains": DOMAINS, "base": str(tmp_path / "base")}
    torch.save({"state_dict": state, "hyper_parameters": hp}, tmp_path / "last.ckpt")
    return m


def stock_pipeline(lora_file) -> FluxPipeline:
    """A stock FluxPipeline around the base transformer (no VAE / text encoders: LoRA loading needs none)."""
    pipe = bare_pipeline(tiny_transformer(0))
    pipe.load_lora_weights(str(lora_file), adapter_name="exported")
    return pipe


@pytest.mark.parametrize("kind", ["masked", "asymmetric", "lora"])
def test_exported_lora_loads_in_flux_pipeline_and_matches(tmp_path, kind):
    m = make_checkpoint(tmp_path, kind)
    x = random_inputs(m)
    outputs = {}
    for name in DOMAINS:
        out_file = tmp_path / f"{name}.safetensors"
        main(["--ckpt", str(tmp_path / "last.ckpt"), "--domain", name, "--out", str(out_file)])
        file_keys = set(load_file(str(out_file)))
        assert all(
            k.startswith("transformer.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))
            for k in file_keys
        )
        pipe = stock_pipeline(out_file)
        loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="exported")
        assert {f"transformer.{k}" for k in loaded} == file_keys  # no missing, no unexpected keys
        with torch.no_grad():
            got = pipe.transformer(**x)[0]  # (B, N, 64)
            with use_domains(m, torch.tensor([DOMAINS.index(name)] * 2)):
                want = m(**x)[0]
        assert ((got - want).norm() / want.norm()) < 1e-4
        outputs[name] = got
    differ = not torch.allclose(outputs["lego"], outputs["clay"], atol=1e-4)
    assert differ == (kind != "lora")


def test_unseen_domain_and_bad_names(tmp_path):
    make_checkpoint(tmp_path, "masked")
    main(["--ckpt", str(tmp_path / "last.ckpt"), "--domain", "unseen", "--out", str(tmp_path / "u.safetensors")])
    assert (tmp_path / "u.safetensors").exists()
    with pytest.raises(SystemExit, match="unknown domain 'wood'"):
        main(["--ckpt", str(tmp_path / "last.ckpt"), "--domain", "wood", "--out", str(tmp_path / "w.safetensors")])


def test_adapter_tensors_strips_prefixes():
    sd = {
        "model.transformer.a.to_q.lora_A.default.weight": 1,
        "transformer.a.to_q.lora_gate": 2,
        "model.transformer.a.to_q.base_layer.weight": 3,
        "optimizer.x": 4,
    }
    assert adapter_tensors(sd) == {"a.to_q.lora_A.default.weight": 1, "a.to_q.lora_gate": 2}
