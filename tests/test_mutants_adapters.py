"""Tests written for mutants of models/adapter_layers.py and models/adapters.py that survived `make mutation`
(docs/TESTING.md lists them): each names the mutants it kills and was checked red by applying one of them by hand
(`mutmut apply NAME` in build/mutation/<module>/, or the edit named) and restored."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_layers import AsymmetricLoraLinear, MaskedLoraLinear
from pm_lightning.models.adapter_routing import use_domains
from pm_lightning.models.adapter_state import adapter_state_dict, load_adapter_state_dict
from pm_lightning.models.adapters import adapter_parameters, add_adapters, domain_layers, materialize_adapters
from tests.helpers import random_inputs, tiny_transformer

RANK = 4


def adapted(kind: str, model=None, **kw):
    """`model` (default: the tiny transformer) with `kind` adapters, rank 4, 3 domains, random non-zero B and gates.
    Masked gates are `unbounded` unless `gates` is given: these tests read gate parameters as gate values."""
    m = tiny_transformer(0) if model is None else model
    kw.setdefault("gates", "unbounded")
    add_adapters(m, AdapterConfig(kind=kind, rank=RANK, alpha=2.0, num_domains=3, **kw))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in domain_layers(m):
            for b in layer.lora_B.values():
                b.weight.copy_(0.3 * torch.randn(b.weight.shape, generator=g))
            if isinstance(layer, MaskedLoraLinear):
                gate = layer.lora_gate["default"]
                gate.copy_(2 * torch.rand(gate.shape, generator=g))
    return m


def forward(m, inputs, domains):
    with use_domains(m, None if domains is None else torch.tensor(domains)):
        return m(**inputs)[0]  # (B, N, 64)


def test_asymmetric_without_domains_uses_the_mean_of_the_Bs_like_the_unseen_domain():
    """No domains set (None: every sample unseen) routes through the same B as domain -1, the mean of the domain Bs,
    and not through any one domain's B. Kills adapter_layers `AsymmetricLoraLinear._routed_update` mutants 6 and 7
    (`table[+1]`, `table[-2]` in the no-domains branch); checked red with mutant 7 applied."""
    m = adapted("asymmetric")
    x = random_inputs(m)
    unseen = forward(m, x, [-1, -1])
    assert torch.allclose(forward(m, x, None), unseen, atol=1e-6)
    for c in range(3):
        assert not torch.allclose(forward(m, x, [c, c]), unseen, atol=1e-4)


@pytest.mark.parametrize("kind", ["masked", "asymmetric"])
def test_adapters_are_made_on_the_device_of_the_layer_they_adapt(kind):
    """add_adapters on a model already on another device (and no device context) makes every adapter tensor there,
    and the masked layer's mask table too: on a GPU model no table may be left on the CPU. The meta device stands in
    for the GPU on this CPU-only machine. Kills adapter_layers `MaskedLoraLinear.mask_table` 6 (the fixed rows made
    on the default device); checked red with it applied. (The asymmetric case kills nothing: peft's
    `_replace_module` moves every `lora_*` submodule to the base weight's device after the layer is built, which
    makes DomainB's own `device=` equivalent; checked: the test passes with `_add_domain_params` mutant 10.)"""
    m = adapted(kind, model=tiny_transformer(0).to("meta"))
    assert {p.device.type for p in adapter_parameters(m)} == {"meta"}
    for layer in domain_layers(m):
        assert layer.domain_B("default", 0).device.type == "meta"
        if isinstance(layer, MaskedLoraLinear):
            assert layer.mask_table("default").device.type == "meta"


@pytest.mark.parametrize("kind", ["masked", "asymmetric"])
def test_a_bf16_model_s_tables_and_merged_deltas_stay_bf16(kind):
    """In a model cast to bf16 (as `precision: bf16-true` does), the mask table, each domain's B and the delta that
    merge() folds into the base weight are bf16, as peft's own lora.Linear's delta is. Kills adapter_layers
    `MaskedLoraLinear.mask_table` 7 (the fixed rows made fp32: the table promoted to fp32) and
    `DomainLoraLinear.get_delta_weight` 8 (the fp32 product not cast back); checked red with each applied."""
    m = adapted(kind).to(torch.bfloat16)
    for layer in domain_layers(m):
        assert layer.get_delta_weight("default").dtype == torch.bfloat16
        assert layer.domain_B("default", 1).dtype == torch.bfloat16
        if isinstance(layer, MaskedLoraLinear):
            assert layer.mask_table("default").dtype == torch.bfloat16


def test_under_autocast_the_masked_rank_activations_stay_in_the_autocast_dtype():
    """Under bf16 autocast (`precision: bf16-mixed`) the masked product h * m stays bf16: the fp32 gates are cast to
    the activations' dtype, so lora_B receives (and autograd keeps) bf16 activations, not fp32 ones of twice the
    size. Kills adapter_layers `MaskedLoraLinear._routed_update` 5 (`m.to(None)`: h * m promoted to fp32); checked
    red with it applied."""
    m = adapted("masked")
    seen = []
    for layer in domain_layers(m):
        layer.lora_B["default"].register_forward_hook(lambda mod, args, out: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forward(m, random_inputs(m), [0, 2])
    assert seen and set(seen) == {torch.bfloat16}


def test_the_domain_B_table_prints_its_sizes():
    """The asymmetric B's repr (what `print(model)` shows) gives its domains and its in / out sizes in that order.
    Kills adapter_layers `DomainB.extra_repr` mutants (no test ran it); checked red with mutant 1 applied."""
    layer = next(x for x in domain_layers(adapted("asymmetric")) if isinstance(x, AsymmetricLoraLinear))
    d = layer.out_features
    assert f"domains=3, in_features={RANK}, out_features={d}" in repr(layer.lora_B["default"])


def test_a_second_adapter_on_a_masked_layer_keeps_the_first_one_s_gates():
    """peft adds a second adapter to a layer by calling its update_layer again (what `inject_adapter_in_model` with
    another adapter name does): the gate table is created once, so the first adapter keeps its gates and its output.
    Kills adapter_layers `MaskedLoraLinear.update_layer` mutants 6, 10 and 11 (the `hasattr` test always false: a new,
    empty gate table replaces the first adapter's); checked red with mutant 6 applied."""
    layer = next(x for x in domain_layers(adapted("masked")) if isinstance(x, MaskedLoraLinear))
    layer.domains = torch.tensor([0, 2])
    x = torch.randn(2, 5, layer.in_features)  # (B, N, k)
    before, gates = layer(x), layer.lora_gate["default"].detach().clone()
    layer.update_layer("other", RANK, 2.0, config=LoraConfig(r=RANK, lora_alpha=2.0), num_domains=3, num_gated=2)
    assert set(layer.lora_gate) == {"default", "other"}
    assert torch.equal(layer.lora_gate["default"], gates)
    layer.set_adapter("default")
    layer.domains = torch.tensor([0, 2])  # update_layer resets the routing
    assert torch.equal(layer(x), before)


@pytest.mark.parametrize("unseen_mask", ["ones", "mean"])
def test_the_mask_table_has_one_row_per_domain_and_the_unseen_row_last(unseen_mask):
    """`mask_table` is (num_domains + 1, r): the domains' masks (gates, then fixed ones), then the unseen mask.
    Kills adapter_layers `MaskedLoraLinear.mask_table` mutant 40 (two unseen rows: index -1 still works, the table
    is one row too long); checked red with it applied."""
    layer = next(
        x for x in domain_layers(adapted("masked", unseen_mask=unseen_mask)) if isinstance(x, MaskedLoraLinear)
    )
    gate = layer.lora_gate["default"]  # (3, g)
    table = layer.mask_table("default")
    g = gate.shape[1]
    assert table.shape == (4, RANK)
    assert torch.equal(table[:3, :g], gate) and torch.equal(table[:3, g:], torch.ones(3, RANK - g))
    unseen = torch.ones(RANK) if unseen_mask == "ones" else table[:3].mean(0)
    assert torch.allclose(table[3], unseen)


@pytest.mark.parametrize("kind", ["masked", "asymmetric"])
def test_materialized_adapters_of_a_meta_skeleton_hold_a_trained_state_and_keep_their_ties(kind):
    """What the export's skeleton does (`lora_files.adapter_skeleton`): a model and its adapters built on the meta
    device, the adapters given real storage (the default device, CPU), a trained adapter state loaded. Every adapter
    tensor is then on the CPU and holds the trained values, the base stays on meta, and the fused q/k/v still share
    one A. (Not the gates: `to_empty` gives each ParameterDict its own new gate Parameter, so the docstring's "ties
    survive" holds for A only; the values agree after loading. Left to issue 25's branch, which changes this module.) Kills adapters `materialize_adapters` mutants 1, 3, 5, 6, 7, 11 (no test ran it); checked red
    with mutant 1 (the default device "XXcpuXX") and 5 (`getattr(None, attr, None)`: nothing materialized)."""
    trained = adapted(kind)
    with torch.device("meta"):
        skeleton = tiny_transformer(0)
        add_adapters(skeleton, AdapterConfig(kind=kind, rank=RANK, alpha=2.0, num_domains=3))
    materialize_adapters(skeleton)
    load_adapter_state_dict(skeleton, adapter_state_dict(trained))
    assert {p.device.type for p in adapter_parameters(skeleton)} == {"cpu"}
    assert skeleton.transformer_blocks[0].attn.to_q.base_layer.weight.is_meta
    for key, value in adapter_state_dict(skeleton).items():
        assert torch.equal(value, adapter_state_dict(trained)[key]), key
    attn = skeleton.transformer_blocks[0].attn
    assert attn.to_k.lora_A["default"] is attn.to_q.lora_A["default"]


@pytest.mark.parametrize("kind", ["masked", "asymmetric"])
def test_peft_s_own_merge_on_a_fresh_layer_folds_in_the_unseen_domain(kind):
    """peft's `layer.merge()` called directly (not through `merge_adapters`, which picks a domain first) folds in the
    unseen domain's update: the merged layer gives the unmerged output of samples with no domain. Kills
    adapter_layers `DomainLoraLinear.update_layer` mutant 4 (`merge_domain` starting as None: the delta of no
    domain); checked red with it applied."""
    layer = domain_layers(adapted(kind))[0]
    x = torch.randn(2, 5, layer.in_features)  # (B, N, k)
    with torch.no_grad():
        unseen = layer(x)  # domains None: every sample unseen
        layer.merge()
        assert torch.allclose(layer(x), unseen, atol=1e-5)


@pytest.mark.parametrize("kind", ["masked", "asymmetric"])
def test_a_bf16_base_with_fp32_adapters_gives_bf16_outputs(kind):
    """The training set-up: a bf16 base with the fp32 adapters add_adapters makes. Each layer casts its input to the
    adapters' dtype and its output back to the base's: bf16 out, close to the all-fp32 model. Kills adapter_layers
    `DomainLoraLinear.forward` mutants 10 and 28 (the output left fp32) and 15 (the input not cast: a dtype error);
    checked red with 28 and 15 applied."""
    m = adapted(kind)
    x = random_inputs(m)
    full = forward(m, x, [0, 2])
    m.to(torch.bfloat16)
    for p in adapter_parameters(m):
        p.data = p.data.float()
    half = forward(
        m,
        {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in x.items()},
        [0, 2],
    )
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), full, atol=0.1, rtol=0.05)


def test_an_active_adapter_missing_from_a_layer_is_skipped_not_the_end_of_the_list():
    """With several active adapters (peft's `set_adapter([...])`), a layer skips one it does not carry and still
    applies the others. Kills adapter_layers `DomainLoraLinear.forward` mutant 12 (`break`: the adapters after the
    missing one dropped); checked red with it applied."""
    layer = domain_layers(adapted("masked"))[0]
    layer.domains = torch.tensor([0, 2])
    x = torch.randn(2, 5, layer.in_features)  # (B, N, k)
    with torch.no_grad():
        alone = layer(x)
        layer.set_adapter(["elsewhere", "default"])
        assert torch.equal(layer(x), alone)


def test_a_target_named_by_its_last_part_adapts_that_linear_in_every_block():
    """A target given as a module's last name (`to_k`, peft's usual form) matches that Linear in every double and
    single block, by the dotted suffix. Kills adapters `resolve_targets` mutant 26 (the suffix test broken: only
    full or block-relative names match); checked red with it applied."""
    names = add_adapters(tiny_transformer(0), AdapterConfig(kind="lora", rank=RANK, target_modules=["to_k"]))
    assert names == [f"transformer_blocks.{i}.attn.to_k" for i in range(2)] + [
        f"single_transformer_blocks.{i}.attn.to_k" for i in range(3)
    ]


@pytest.mark.parametrize("kind", ["lora", "masked", "asymmetric"])
def test_fresh_adapters_leave_the_base_output_unchanged_and_a_second_injection_is_refused(kind):
    """Freshly added adapters start with B = 0 (peft's LoRA initialisation), so the adapted model gives exactly the
    base output; adding adapters twice raises, saying why. Kills adapters `add_adapters` mutants 21
    (`init_lora_weights=None`: peft's B keeps nn.Linear's random initialisation) and 4 (the error without its
    message); checked red with each applied."""
    base = tiny_transformer(0)
    x = random_inputs(base)
    with torch.no_grad():
        expected = base(**x)[0]
        m = tiny_transformer(0)
        add_adapters(m, AdapterConfig(kind=kind, rank=RANK, alpha=2.0, num_domains=3))
        assert torch.equal(forward(m, x, [0, 2]), expected)
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(m, AdapterConfig(kind=kind, rank=RANK, num_domains=3))
