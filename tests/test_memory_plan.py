"""The analytic memory plan: component sums, sharding rules, exact CAME state, flux-dev consistency."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch
from torch import nn

from pm_lightning import memory_plan
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.variants import TINY_FLUX_TRANSFORMER
from pm_lightning.scaling import memory_formulas as mf
from pm_lightning.scaling import model_shapes as ms
from pm_lightning.scaling import plan_search as ps

WORK = mf.Workload(tokens=4608, text_tokens=512, batch=1, align_layers=5)


@pytest.fixture(scope="module")
def small_shape() -> ms.ModelShape:
    from diffusers import FluxTransformer2DModel

    from pm_lightning.models.adapters import add_adapters

    with torch.device("meta"):
        model = FluxTransformer2DModel(**TINY_FLUX_TRANSFORMER)
        add_adapters(model, AdapterConfig(kind="masked", rank=16, num_domains=4))
    return ms.shape_of(model)


@pytest.fixture(scope="module")
def flux_dev() -> dict:
    """`python -m pm_lightning.memory_plan --json --text-cache` (flux-dev, masked rank 64, 21 domains, 8 x 48 GiB)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        memory_plan.main(["--json", "--text-cache"])
    return json.loads(out.getvalue())


def test_components_sum_to_total(small_shape):
    for plan in ps.plan_all(small_shape, WORK, gpus=8, gpu_gib=48):
        assert plan.total == sum(plan.components.values())
        assert all(v >= 0 for v in plan.components.values())
        assert plan.fits == (plan.total <= 48 * mf.GiB)


def test_sharding_divides_where_it_should(small_shape):
    one = {p.strategy: p.components for p in ps.plan_all(small_shape, WORK, gpus=1)}
    eight = {p.strategy: p.components for p in ps.plan_all(small_shape, WORK, gpus=8)}
    opt = "optimizer state (came, fp32)"
    # DDP replicates everything
    assert one["ddp"] == eight["ddp"]
    # FSDP2 shards the base too, in bf16
    for name in ("fsdp_full_shard", "fsdp_shard_grad_op"):
        assert eight[name]["frozen base"] == math.ceil(small_shape.base_params * 2 / 8)
        assert eight[name]["frozen base"] == math.ceil(one[name]["frozen base"] / 8)
        assert eight[name][opt] == math.ceil(one[name][opt] / 8)
    # activations and the gathered working set do not shrink with more GPUs
    for name in mf.STRATEGIES:
        for key in (
            "activations: block checkpoints",
            "activations: one block backward",
            "alignment features",
            "gathered params (bf16)",
        ):
            assert eight[name][key] == one[name][key]
    # reshard_after_forward false keeps every unit gathered; true only two units (+ root)
    assert (
        eight["fsdp_shard_grad_op"]["gathered params (bf16)"]
        == (small_shape.base_params + small_shape.adapter_params) * 2
    )
    assert (
        eight["fsdp_full_shard"]["gathered params (bf16)"]
        == (2 * small_shape.largest_unit + small_shape.root_params) * 2
    )


def test_came_state_is_exact_for_a_small_module():
    from came_pytorch import CAME

    model = nn.ModuleDict({"lin": nn.Linear(5, 7), "emb": nn.Embedding(3, 4)})
    model.register_parameter("cube", nn.Parameter(torch.randn(2, 3, 4)))
    model.register_parameter("vec", nn.Parameter(torch.randn(6)))
    for name, make in (("came", lambda ps: CAME(ps, lr=1e-3)), ("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-3))):
        params = list(model.parameters())
        opt = make(params)
        sum(p.sum() for p in params).backward()
        opt.step()
        real = sum(v.numel() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
        assert real == mf.optimizer_state_elements([p.shape for p in params], name), name
        model.zero_grad()


def test_came_factored_state_is_smaller_for_2d():
    for shape in [(64, 3072), (18432, 64), (21, 19), (21, 3072, 64)]:
        assert mf.came_state_elements(shape) < mf.adamw_state_elements(shape)
    # came = m (full) + 2 x (rows + cols) + RMS
    assert mf.came_state_elements((64, 3072)) == 64 * 3072 + 2 * (64 + 3072) + 1
    assert mf.came_state_elements((10,)) == 2 * 10 + 1


def test_activation_formula(small_shape):
    acts = mf.activation_bytes(small_shape, WORK)
    unit = WORK.tokens * small_shape.hidden * 2
    assert acts["activations: block checkpoints"] == small_shape.num_blocks * unit
    assert acts["activations: one block backward"] == (mf.SAVED_PER_BLOCK + mf.GRAD_PER_BLOCK) * unit
    assert acts["alignment features"] == 5 * 4096 * small_shape.hidden * 2 * mf.ALIGN_PER_LAYER
    off = mf.activation_bytes(small_shape, mf.Workload(checkpointing=False, align_layers=0))
    assert off["activations: block checkpoints"] == small_shape.num_blocks * mf.SAVED_PER_BLOCK * unit
    assert off["alignment features"] == 0


def test_flux_dev_consistent_with_params(flux_dev):
    from pm_lightning.models.param_count import count_parameters

    counts = count_parameters("flux-dev", AdapterConfig(rank=64, num_domains=21), kinds=("masked",))
    assert flux_dev["base_params"] == counts["base"] == 11_901_408_320
    assert flux_dev["adapter_params"] == counts["trainable"]["masked"] == 306_436_560


def test_flux_dev_plan_on_8_a6000(flux_dev):
    plans = flux_dev["plans"]
    assert set(plans) == set(mf.STRATEGIES)
    gib = 2**30
    assert plans["ddp"]["bytes"]["frozen base"] == 11_901_408_320 * 2  # bf16, whole on every GPU
    assert plans["fsdp_full_shard"]["bytes"]["frozen base"] == 11_901_408_320 * 2 // 8  # FSDP2: bf16, sharded
    assert all(p["fits"] for p in plans.values())  # masked rank 64 fits 48 GiB under every strategy
    assert plans["fsdp_full_shard"]["total"] < plans["fsdp_shard_grad_op"]["total"] < plans["ddp"]["total"]
    assert 25 * gib < plans["ddp"]["total"] < 40 * gib


def run_plan(*argv: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        memory_plan.main(["--json", *argv])
    return json.loads(out.getvalue())


def test_text_encoders_vae_and_quantization_are_counted(flux_dev):
    gib = 2**30
    with_t5 = run_plan()["plans"]["ddp"]["bytes"]
    cached = flux_dev["plans"]["ddp"]["bytes"]
    assert cached["text encoders (bf16)"] == 0
    assert with_t5["text encoders (bf16)"] == ms.FLUX_TEXT_ENCODER_PARAMS * 2  # T5-XXL + CLIP-L: 9.1 GiB
    assert 41 * gib < sum(with_t5.values()) < 44 * gib  # the "about 41-44 GiB with them"
    assert cached["VAE (bf16)"] == ms.FLUX_VAE_PARAMS * 2
    fp8, nf4 = (run_plan("--text-cache", "--quant", q)["plans"]["ddp"]["bytes"]["frozen base"] for q in ("fp8", "nf4"))
    bf16 = cached["frozen base"]
    assert nf4 < fp8 < bf16 and 0.5 < fp8 / bf16 < 0.52  # nearly all the base is Linear weights
    shape = ms.model_shape("flux-dev", AdapterConfig(rank=64, num_domains=21))
    assert fp8 == bf16 - shape.linear_params  # 2 -> 1 byte per Linear weight


def test_the_plan_states_what_fits_a_card():
    assert run_plan("--card-gib", "48")["recommended"] == {
        "strategy": "ddp",
        "quant": "none",
        "text_cache": True,
        "total": run_plan("--card-gib", "48", "--text-cache")["plans"]["ddp"]["total"],
        "fits": True,
    }
    eight_24 = run_plan("--card-gib", "24")["recommended"]
    assert (eight_24["strategy"], eight_24["quant"]) == ("fsdp_full_shard", "none")  # FSDP2 fits 24 GB on 8 GPUs
    one_24 = run_plan("--card-gib", "24", "--gpus", "1")["recommended"]
    assert one_24["quant"] != "none" and one_24["total"] <= 24 * 2**30  # one 24 GB card needs a quantized base
    assert run_plan("--card-gib", "8", "--gpus", "1")["recommended"] is None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        memory_plan.main(["--card-gib", "24", "--gpus", "1"])
    assert "recommended on 24 GiB" in out.getvalue() and "(quantize: int8)" in out.getvalue()
    assert "not yet measured" in out.getvalue()  # no GPU has run the quantized base: the figure is the plan's


def test_quantized_rows_are_the_configs_that_run_and_the_latent_cache_drops_the_vae():
    plan = run_plan("--card-gib", "24", "--gpus", "1", "--text-cache")
    quantized = {(o["strategy"], o["quant"]) for o in plan["options"] if o["quant"] != "none"}
    assert quantized == {("ddp", q) for q in ("int8", "fp8", "nf4")}  # FSDP2 / ZeRO cannot shard the quantized base
    assert plan["recommended"]["quant"] == "int8"  # same bytes as fp8, closer to bf16 on the tiny base
    int8, fp8 = (
        run_plan("--text-cache", "--quant", q)["plans"]["ddp"]["bytes"]["frozen base"] for q in ("int8", "fp8")
    )
    assert int8 == fp8
    cached = run_plan("--text-cache", "--latent-cache")["plans"]["ddp"]
    assert cached["bytes"]["VAE (bf16)"] == 0
    assert run_plan("--text-cache")["plans"]["ddp"]["total"] - cached["total"] == ms.FLUX_VAE_PARAMS * 2
    with pytest.raises(SystemExit):
        memory_plan.main(["--quant", "int4"])


def test_tiny_variant_counts_its_text_encoders_and_vae():
    shape = ms.model_shape("tiny", AdapterConfig(rank=4, num_domains=4))
    assert 0 < shape.text_encoder_params and 0 < shape.vae_params and 0 < shape.linear_params < shape.base_params
