"""Tests written for mutants of models/kohya.py that survived `make mutation` (docs/TESTING.md lists them): each names
the mutants it kills and was checked red by applying one of them by hand (the edit named) and restored."""

from __future__ import annotations

import pytest
import torch

from pm_lightning.models.kohya import diffusers_to_kohya, kohya_metadata
from tests.helpers import tiny_transformer


def test_the_metadata_carries_the_sd_scripts_fields_that_tools_read():
    """sd-scripts' `ss_network_dim` / `ss_network_alpha` (the rank, and alpha = rank: the scale is folded into B),
    `ss_base_model_version` "flux1" and modelspec's architecture "flux-1-dev/lora": the names and values kohya's
    and ComfyUI's readers look up, as strings. Kills kohya `kohya_metadata` mutants 5-18 (a key or value renamed,
    `str(None)`); checked red with mutant 7 (`str(None)` for the dim) and 15 (the architecture key renamed)."""
    meta = kohya_metadata(8, "cooking")
    assert meta["ss_network_module"] == "networks.lora_flux"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("8", "8")
    assert meta["ss_base_model_version"] == "flux1"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["pm_lightning.domain"] == "cooking"
    assert all(isinstance(v, str) for v in meta.values())


def pair(rank: int, k: int = 6, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rank, k), torch.randn(d, rank)  # A (r, k), B (d, r)


def test_bad_state_dicts_are_refused_naming_the_key_and_the_problem():
    """A key that is not a Flux block's LoRA tensor, an A without its B, and fused members of different ranks are
    refused, each naming what is wrong. Kills kohya `diffusers_to_kohya` mutants 5, 20, 21 (the messages) and 56 (the rank
    read from A's second dimension, the input size: members of ranks 2 and 3 accepted); checked red with 56 applied.
    (Mutant 22, `'XXXX'.join(ab)`, is equivalent: with its partner missing `ab` has one key, and a one-item join
    has no separator; checked: this test passes with it.)"""
    with pytest.raises(ValueError, match=r"'proj_out.lora_A.weight' is not a LoRA tensor of a Flux block"):
        diffusers_to_kohya({"proj_out.lora_A.weight": torch.zeros(2, 6)})
    a, _ = pair(2)
    with pytest.raises(ValueError, match=r"^transformer_blocks\.0\.attn\.to_out\.0 has lora_A without its partner$"):
        diffusers_to_kohya({"transformer_blocks.0.attn.to_out.0.lora_A.weight": a})
    sd = {}
    for member, rank in (("to_q", 2), ("to_k", 3), ("to_v", 2)):
        a, b = pair(rank)
        sd[f"transformer_blocks.0.attn.{member}.lora_A.weight"] = a
        sd[f"transformer_blocks.0.attn.{member}.lora_B.weight"] = b
    with pytest.raises(ValueError, match=r"img_attn_qkv: members of one fused module must share a rank, got \[2, 3\]"):
        diffusers_to_kohya(sd)


def test_a_half_precision_file_with_a_member_without_adapter_stays_half_precision():
    """A bf16 LoRA whose fused q/k/v lacks v: the zero rows made for v take the file's dtype, so the fused
    lora_up / lora_down stay bf16 (block_diag would promote the whole module to fp32 otherwise). Kills kohya
    `diffusers_to_kohya` mutant 95 (v's zero B made fp32); checked red with it applied."""
    model, sd = tiny_transformer(0), {}
    for member in ("to_q", "to_k"):
        linear = model.transformer_blocks[0].attn.get_submodule(member)
        a, b = pair(2, k=linear.in_features, d=linear.out_features)
        sd[f"transformer_blocks.0.attn.{member}.lora_A.weight"] = a.bfloat16()
        sd[f"transformer_blocks.0.attn.{member}.lora_B.weight"] = b.bfloat16()
    out = diffusers_to_kohya(sd, model)
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    assert out[f"{name}.lora_up.weight"].dtype == out[f"{name}.lora_down.weight"].dtype == torch.bfloat16
