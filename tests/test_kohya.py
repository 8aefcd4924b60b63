"""kohya-format LoRA export: the keys ComfyUI / kohya tools read, checked with diffusers' own kohya reader."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_routing import use_domains
from pm_lightning.models.adapter_state import domain_lora_state_dict
from pm_lightning.models.adapters import add_adapters
from pm_lightning.models.kohya import DOUBLE, diffusers_to_kohya, kohya_name
from pm_lightning.models.lora_files import export_domain_lora
from tests.helpers import bare_pipeline, random_inputs, tiny_transformer
from tests.test_adapters import randomize

# diffusers' reader assumes FLUX.1-dev's widths for a single block's fused linear1 (3072 x 3 + 12288), so the tiny
# transformer is checked without that module and the FLUX.1-dev-width test (slow) covers it
NOT_LINEAR1 = [f"transformer_blocks.{i}.{m}" for i in range(2) for m in DOUBLE] + [
    f"single_transformer_blocks.{i}.{m}" for i in range(3) for m in ("proj_out", "norm.linear")
]


def adapted(kind: str, targets=None, seed: int = 0, **shape):
    m = tiny_transformer(seed, **shape)
    cfg = AdapterConfig(kind=kind, rank=4, alpha=8.0, num_domains=2, target_modules=targets)
    add_adapters(m, cfg)
    randomize(m)
    return m


def test_names_follow_black_forest_labs_modules():
    assert kohya_name("transformer_blocks.3.attn.to_k") == ("lora_unet_double_blocks_3_img_attn_qkv", 1)
    assert kohya_name("transformer_blocks.0.ff_context.net.2") == ("lora_unet_double_blocks_0_txt_mlp_2", None)
    assert kohya_name("single_transformer_blocks.7.proj_mlp") == ("lora_unet_single_blocks_7_linear1", 3)
    with pytest.raises(ValueError, match="no kohya name"):
        kohya_name("x_embedder")


def test_fused_modules_are_block_diagonal_and_keep_the_product():
    m = adapted("masked")
    sd = domain_lora_state_dict(m, 1)
    kohya = diffusers_to_kohya(sd, m)
    assert all(k.startswith("lora_unet_") for k in kohya)
    names = {k.split(".")[0] for k in kohya}
    for name in names:  # every module: down, up and an alpha equal to its rank (scale 1: alpha / r is folded)
        assert kohya[f"{name}.alpha"].item() == kohya[f"{name}.lora_down.weight"].shape[0]
    name = "lora_unet_single_blocks_1_linear1"
    down, up = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"]
    members = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
    want = torch.cat([sd[f"single_transformer_blocks.1.{k}.lora_B.weight"] @ sd[f"single_transformer_blocks.1.{k}.lora_A.weight"] for k in members])  # fmt: skip
    torch.testing.assert_close(up @ down, want)  # the fused module's delta is the members' deltas stacked
    modules = {k.rsplit(".lora_", 1)[0] for k in sd}
    assert names == {kohya_name(k)[0] for k in modules}  # every adapted module lands in exactly its kohya module


def test_a_fused_member_without_adapter_gets_zero_rows():
    m = adapted("lora", targets=["attn.to_q", "attn.to_k", "attn.to_v"])  # proj_mlp not adapted
    sd = domain_lora_state_dict(m, 0)
    kohya = diffusers_to_kohya(sd, m)
    up = kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    mlp = m.single_transformer_blocks[0].proj_mlp.out_features
    assert up.shape[0] == 3 * 32 + mlp and up[-mlp:].abs().sum() == 0
    with pytest.raises(ValueError, match="pass the transformer"):
        diffusers_to_kohya(sd)


@pytest.mark.parametrize("kind", ["masked", "asymmetric"])
def test_diffusers_reads_the_kohya_file_like_the_diffusers_file(tmp_path, kind):
    """Stock FluxPipeline.load_lora_weights converts the kohya file (its own kohya reader) into the same adapter."""
    m = adapted(kind, targets=NOT_LINEAR1)
    x = random_inputs(m)
    files = {}
    for fmt in ("diffusers", "kohya"):
        files[fmt] = export_domain_lora(m, 1, tmp_path / f"{fmt}.safetensors", fmt=fmt, domain_name="clay")
    with safe_open(str(files["kohya"]), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora_flux" and meta["pm_lightning.domain"] == "clay"
    outs = {}
    for fmt, path in files.items():
        pipe = bare_pipeline(tiny_transformer(0))
        pipe.load_lora_weights(str(path), adapter_name=fmt)
        with torch.no_grad():
            outs[fmt] = pipe.transformer(**x)[0]
    with torch.no_grad(), use_domains(m, torch.tensor([1, 1])):
        want = m(**x)[0]
    torch.testing.assert_close(outs["kohya"], outs["diffusers"], rtol=1e-5, atol=1e-5)
    assert ((outs["kohya"] - want).norm() / want.norm()) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_files(tmp_path, dtype):
    m = adapted("masked", targets=NOT_LINEAR1)
    path = export_domain_lora(m, 0, tmp_path / "k.safetensors", dtype, fmt="kohya")
    assert {v.dtype for v in load_file(str(path)).values()} == {dtype}


@pytest.mark.slow
def test_flux_dev_width_kohya_file_gives_the_same_image(tmp_path):
    """At FLUX.1-dev's widths (24 heads x 128, MLP 12288: what diffusers' kohya reader assumes) with every Linear
    adapted, single blocks' fused linear1 included: the kohya and diffusers files give the same image from one
    seed through stock FluxPipeline (the embedded tiny VAE and text encoders; one double and one single block)."""
    from pm_lightning.core.paths import tiny_flux_dir

    shape = dict(num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=24)
    shape.update(joint_attention_dim=64, pooled_projection_dim=64, axes_dims_rope=(16, 56, 56))
    m = adapted("masked", **shape)
    files = {fmt: export_domain_lora(m, 0, tmp_path / f"{fmt}.safetensors", fmt=fmt) for fmt in ("diffusers", "kohya")}
    del m
    pipe = FluxPipeline.from_pretrained(str(tiny_flux_dir()), transformer=tiny_transformer(0, **shape))
    pipe.set_progress_bar_config(disable=True)

    def image(adapter: str | None):
        if adapter:
            pipe.load_lora_weights(str(files[adapter]), adapter_name=adapter)
        out = pipe("a red brick tower", height=64, width=64, num_inference_steps=2, output_type="np",
                   generator=torch.Generator().manual_seed(3), max_sequence_length=32).images[0]  # fmt: skip
        if adapter:
            pipe.unload_lora_weights()
        return out

    plain, kohya, diffusers = image(None), image("kohya"), image("diffusers")
    assert abs(kohya - diffusers).max() < 2e-3
    assert abs(diffusers - plain).max() > 0.05  # the LoRA changes the image, so the agreement means something
