"""Adapter identities on a tiny random Flux transformer: routing, gradients, disable, merge, unseen, config."""

from __future__ import annotations

from typing import get_args, get_type_hints

import pytest
import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from pm_lightning.models.adapter_config import ADAPTER_KINDS, AdapterConfig
from pm_lightning.models.adapter_layers import AsymmetricLoraLinear, MaskedLoraLinear
from pm_lightning.models.adapter_routing import (
    adapters_disabled,
    merge_adapters,
    set_domains,
    unmerge_adapters,
    use_domains,
)
from pm_lightning.models.adapter_state import (
    adapter_state_dict,
    domain_lora_state_dict,
    load_adapter_state_dict,
    mask_l1,
)
from pm_lightning.models.adapters import adapter_parameters, add_adapters
from tests.helpers import random_inputs, tiny_transformer

RANK = 4


def adapted(kind: str, domains: int = 3, seed: int = 0, **kw):
    """Tiny transformer with `kind` adapters (rank 4). Masked gates are `unbounded` unless `gates` is given: these
    tests set gate parameters as gate values (the sigmoid gates' own tests: tests/test_adapter_masks.py)."""
    m = tiny_transformer(seed)
    kw.setdefault("gates", "unbounded")
    add_adapters(m, AdapterConfig(kind=kind, rank=RANK, alpha=2.0, num_domains=domains, **kw))
    return m


def randomize(m, gates: bool = True, seed: int = 0) -> None:
    """Random non-zero adapter weights (B is zero at init); gates random in [0, 2] when `gates`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in m.modules():
            if isinstance(layer, MaskedLoraLinear) and gates:
                gate = layer.lora_gate["default"]
                gate.copy_(2 * torch.rand(gate.shape, generator=g))
            if hasattr(layer, "lora_B"):
                for b in layer.lora_B.values():
                    b.weight.copy_(0.3 * torch.randn(b.weight.shape, generator=g))


def run(m, inputs, domains) -> torch.Tensor:
    with use_domains(m, None if domains is None else torch.tensor(domains)):
        return m(**inputs)[0]  # (B, N, 64)


def sample(inputs: dict, i: int) -> dict:
    """Inputs of sample i alone (batch 1)."""
    return {
        k: (
            v[i : i + 1]
            if k in ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance")
            else v
        )
        for k, v in inputs.items()
    }


def copy_lora_into(src, dst, transform=lambda k, v: v) -> None:
    """Load src's A and B into dst (keeping dst's other adapter tensors)."""
    sd = adapter_state_dict(dst)
    sd.update({k: transform(k, v) for k, v in adapter_state_dict(src).items()})
    load_adapter_state_dict(dst, sd)


def test_masked_with_unit_gates_equals_plain_lora():
    lora, masked = adapted("lora"), adapted("masked")
    randomize(lora)
    copy_lora_into(lora, masked)
    x = random_inputs(lora, batch=3)
    assert torch.allclose(run(masked, x, [0, 2, -1]), run(lora, x, None), atol=1e-6)


def test_asymmetric_with_one_domain_equals_plain_lora():
    lora, asym = adapted("lora", domains=1), adapted("asymmetric", domains=1)
    randomize(lora)
    copy_lora_into(lora, asym, lambda k, v: v.unsqueeze(0) if k.endswith("lora_B.weight") else v)
    x = random_inputs(lora)
    assert torch.allclose(run(asym, x, [0, 0]), run(lora, x, None), atol=1e-6)


@pytest.mark.parametrize("kind", ["masked", "asymmetric"])
def test_mixed_batch_equals_one_sample_at_a_time(kind):
    m = adapted(kind)
    randomize(m)
    domains = [0, 2, 1, -1]
    x = random_inputs(m, batch=4)
    batched = run(m, x, domains)
    for i, d in enumerate(domains):
        assert torch.allclose(batched[i : i + 1], run(m, sample(x, i), [d]), atol=1e-5)
    same = run(m, x, [0, 0, 0, 0])
    assert not torch.allclose(batched[1], same[1], atol=1e-4)  # the domains really differ


def test_asymmetric_gradient_reaches_only_the_selected_domain_B():
    m = adapted("asymmetric")
    randomize(m)
    run(m, random_inputs(m), [1, 1]).square().mean().backward()
    for layer in m.modules():
        if isinstance(layer, AsymmetricLoraLinear):
            grad = layer.lora_B["default"].weight.grad  # (C, d, r)
            assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0


def test_masked_gradient_reaches_only_the_selected_domain_gates():
    m = adapted("masked")
    randomize(m)
    run(m, random_inputs(m), [2, 2]).square().mean().backward()
    for layer in m.modules():
        if isinstance(layer, MaskedLoraLinear):
            gate = layer.lora_gate["default"]  # (C, g): only the first g rows are parameters
            assert gate.shape == (3, round(0.3 * RANK))
            assert gate.grad[2].abs().sum() > 0 and gate.grad[:2].abs().sum() == 0
            own = {id(p) for p in layer.parameters()} - {id(p) for p in layer.base_layer.parameters()}
            assert (
                sum(p.numel() for p in layer.parameters() if id(p) in own)
                == RANK * (layer.in_features + layer.out_features) + gate.numel()
            )


@pytest.mark.parametrize("kind", ["lora", "masked", "asymmetric"])
def test_disabled_adapters_give_exactly_the_base_output(kind):
    base = tiny_transformer(0)
    x = random_inputs(base)
    expected = base(**x)[0]
    m = adapted(kind)
    randomize(m)
    with use_domains(m, torch.tensor([0, 1])):
        with adapters_disabled(m):
            assert torch.equal(m(**x)[0], expected)
        assert not torch.allclose(m(**x)[0], expected, atol=1e-4)
    assert all(p.requires_grad for p in adapter_parameters(m))


@pytest.mark.parametrize("kind", ["lora", "masked", "asymmetric"])
def test_merge_matches_adapted_output_and_unmerge_restores_base(kind):
    m = adapted(kind)
    randomize(m)
    base_w = {k: v.clone() for k, v in m.state_dict().items() if "base_layer" in k}
    x = random_inputs(m)
    adapted_out = run(m, x, [1, 1])
    merge_adapters(m, 1)
    assert torch.allclose(run(m, x, None), adapted_out, atol=1e-5)
    with adapters_disabled(m):  # the teacher pass of a merged model is still the base
        base_out = m(**x)[0]
    unmerge_adapters(m)
    for k, v in m.state_dict().items():
        if k in base_w:
            assert torch.allclose(v, base_w[k], atol=1e-6), k
    with adapters_disabled(m):
        assert torch.allclose(m(**x)[0], base_out, atol=1e-6)


def test_unseen_domain_masked_is_the_all_ones_mask():
    m = adapted("masked")
    randomize(m)
    x = random_inputs(m)
    unseen = run(m, x, [-1, -1])
    assert torch.equal(run(m, x, None), unseen)
    for layer in m.modules():
        if isinstance(layer, MaskedLoraLinear):
            layer.lora_gate["default"].data[0] = 1.0
    assert torch.allclose(run(m, x, [0, 0]), unseen, atol=1e-6)


def test_unseen_mask_mean_is_the_mean_of_the_domain_gates():
    m = adapted("masked", unseen_mask="mean")
    randomize(m)
    x = random_inputs(m)
    unseen = run(m, x, [-1, -1])
    assert not torch.allclose(unseen, run(adapted_like_ones(m), x, [-1, -1]), atol=1e-4)  # not the all-ones mask
    for layer in m.modules():
        if isinstance(layer, MaskedLoraLinear):
            g = layer.lora_gate["default"].data
            g[:] = g.mean(0)  # every domain given the mean gates (the mean unchanged): the unseen mask's update
    assert torch.allclose(run(m, x, [0, 0]), unseen, atol=1e-6)
    with pytest.raises(ValueError, match="unseen_mask"):
        AdapterConfig(kind="masked", unseen_mask="median")


def adapted_like_ones(m):
    """The same adapters as `m`, with the default all-ones unseen mask."""
    ones = adapted("masked")
    ones.load_state_dict(m.state_dict())
    return ones


def test_unseen_domain_asymmetric_is_the_mean_of_the_Bs():
    m = adapted("asymmetric")
    randomize(m)
    x = random_inputs(m)
    unseen = run(m, x, [-1, -1])
    for layer in m.modules():
        if isinstance(layer, AsymmetricLoraLinear):
            w = layer.lora_B["default"].weight.data
            w[0] = w.mean(0)
    assert torch.allclose(run(m, x, [0, 0]), unseen, atol=1e-6)


def test_routing_survives_gradient_checkpointing():
    grads = []
    for ckpt in (False, True):
        m = adapted("masked")
        randomize(m)
        m.train()
        if ckpt:
            m.enable_gradient_checkpointing()
        set_domains(m, torch.tensor([0, 2]))  # state that persists through the backward recompute
        m(**random_inputs(m))[0].square().mean().backward()
        grads.append([p.grad.clone() for p in adapter_parameters(m)])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_fused_qkv_shares_A_and_gates():
    m = adapted("masked")
    attn = m.single_transformer_blocks[0]
    group = [attn.attn.to_q, attn.attn.to_k, attn.attn.to_v, attn.proj_mlp]
    assert all(layer.lora_A["default"] is group[0].lora_A["default"] for layer in group)
    assert all(layer.lora_gate["default"] is group[0].lora_gate["default"] for layer in group)
    assert attn.proj_out.lora_A["default"] is not group[0].lora_A["default"]
    unfused = adapted("masked", fused_qkv=False)
    n = lambda mm: sum(p.numel() for p in adapter_parameters(mm))  # noqa: E731
    assert n(unfused) > n(m)


def test_state_dict_round_trip_and_mask_l1():
    m = adapted("masked")
    randomize(m)
    other = adapted("masked")
    randomize(other, seed=5)
    for p in adapter_parameters(other):
        p.data.add_(0.1)
    load_adapter_state_dict(other, adapter_state_dict(m))
    x = random_inputs(m)
    assert torch.equal(run(other, x, [0, 1]), run(m, x, [0, 1]))
    gates = {id(x.lora_gate["default"]): x.lora_gate["default"] for x in m.modules() if isinstance(x, MaskedLoraLinear)}
    expected = torch.cat([g.abs().flatten() for g in gates.values()]).mean()
    assert torch.allclose(mask_l1(m), expected)
    assert mask_l1(adapted("lora")) == 0
    with pytest.raises(KeyError, match="unexpected"):
        load_adapter_state_dict(other, {**adapter_state_dict(m), "nope.lora_A.weight": torch.zeros(1)})


def test_domain_lora_state_dict_reproduces_the_merged_weights():
    m = adapted("masked")
    randomize(m)
    sd = domain_lora_state_dict(m, 2)
    before = {n: x.base_layer.weight.detach().clone() for n, x in m.named_modules() if isinstance(x, MaskedLoraLinear)}
    merge_adapters(m, 2)
    for name, layer in m.named_modules():
        if isinstance(layer, MaskedLoraLinear):
            delta = sd[f"{name}.lora_B.weight"] @ sd[f"{name}.lora_A.weight"]  # (d, k), scale folded in
            assert torch.allclose(layer.base_layer.weight, before[name] + delta, atol=1e-6)


def test_set_domains_validates():
    m = adapted("masked")
    with pytest.raises(ValueError, match="-1..2"):
        set_domains(m, torch.tensor([3]))
    set_domains(m, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="3 domains for a batch of 2"):
        m(**random_inputs(m))


@pytest.mark.parametrize(
    "field,value",
    [
        ("kind", "moe"),
        ("rank", 0),
        ("alpha", -1.0),
        ("num_domains", 0),
        ("target_modules", []),
        ("mask_fraction", 1.5),
        ("mask_l1", -0.1),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"AdapterConfig.{field}"):
        AdapterConfig(**{field: value})


def test_config_defaults_and_unknown_targets():
    cfg = AdapterConfig()
    assert (cfg.kind, cfg.rank, cfg.lora_alpha, cfg.num_gated) == ("masked", 64, 64.0, 19)
    with pytest.raises(ValueError, match="target_modules"):
        add_adapters(tiny_transformer(), AdapterConfig(target_modules=["no_such_layer"]))
    with pytest.raises(ValueError, match="unknown AdapterConfig field"):
        AdapterConfig.from_dict({"rnak": 4})


@pytest.mark.parametrize("kind", sorted(ADAPTER_KINDS))
def test_each_kind_of_the_table_injects_its_layer_class(kind):
    """`ADAPTER_KINDS` is the one list: AdapterConfig accepts exactly its keys and each injects the layer it names."""
    hint = get_type_hints(AdapterConfig)["kind"]
    assert set(get_args(hint)) == set(ADAPTER_KINDS)
    layers = {type(m) for m in adapted(kind).modules() if isinstance(m, PeftLoraLinear)}
    assert layers == {ADAPTER_KINDS[kind].layer or PeftLoraLinear}


def test_an_unknown_kind_raises_instead_of_becoming_another():
    """A kind changed after validation is refused at injection (it used to become the asymmetric layer silently);
    checked red by restoring the old `else AsymmetricLoraLinear` branch of `_layer_factory`."""
    cfg = AdapterConfig(kind="masked", rank=RANK)
    cfg.kind = "sparse"
    with pytest.raises(ValueError, match="unknown adapter kind 'sparse'"):
        add_adapters(tiny_transformer(), cfg)
    with pytest.raises(ValueError, match="AdapterConfig.kind must be one of"):
        AdapterConfig(kind="sparse")
