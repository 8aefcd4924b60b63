"""The masked adapter's gates as a mask: bounded gates, the sparsity term, the first 30% of rows gated, the unseen
masks (ones / shared / mean) as plain LoRAs with rows scaled, and domains=None routed as the unseen domain on every path
that reaches it (the layers, set_domains / use_domains, reference sampling, the exported unseen LoRA)."""

from __future__ import annotations

import pytest
import torch

from pm_lightning.inference.reference_sampling import sample_reference_latents
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_layers import MaskedLoraLinear
from pm_lightning.models.adapter_routing import merge_adapters, set_domains
from pm_lightning.models.adapter_state import (
    adapter_state_dict,
    domain_lora_state_dict,
    load_adapter_state_dict,
    mask_l1,
)
from pm_lightning.models.adapters import add_adapters
from tests.helpers import random_inputs
from tests.test_adapters import RANK, adapted, randomize, run
from tests.test_stage1 import batch  # noqa: F401  (the stage-1 batch fixture)
from tests.test_stage2 import CELL, frame

MASKS = ("ones", "shared", "mean")


def masked_layers(m) -> list[MaskedLoraLinear]:
    return [layer for layer in m.modules() if isinstance(layer, MaskedLoraLinear)]


def random_logits(m, seed: int = 1) -> None:
    """Sigmoid gates spread over (0, 1): logits ~ N(0, 2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in masked_layers(m):
            gate = layer.lora_gate["default"]
            gate.copy_(2 * torch.randn(gate.shape, generator=g))


def unseen_rows(layer: MaskedLoraLinear, unseen_mask: str) -> torch.Tensor:
    """(r,) the unseen mask written out from its definition, independently of mask_table."""
    gates = layer.gate_values("default").detach()  # (C, g)
    g = gates.shape[1]
    m = torch.ones(layer.r["default"])  # (r,)
    if unseen_mask == "shared":
        m[:g] = 0.0
    elif unseen_mask == "mean":
        m[:g] = gates.mean(0)
    return m


def plain_lora(tensors: dict[str, torch.Tensor]):
    """A plain LoRA (rank 4) loaded with `tensors`' A and B (`adapter_state_dict` / `domain_lora_state_dict` keys)."""
    lora = adapted("lora")
    load_adapter_state_dict(lora, {k: v for k, v in tensors.items() if ".lora_gate" not in k})
    return lora


def lora_with_unseen_rows(masked, unseen_mask: str):
    """A plain LoRA with masked's A and B, B's columns scaled by the unseen mask (shared: the first g zeroed)."""
    layers = dict(masked.named_modules())
    sd = adapter_state_dict(masked)
    for key in sd:
        if key.endswith(".lora_B.weight"):
            sd[key] = sd[key] * unseen_rows(layers[key[: -len(".lora_B.weight")]], unseen_mask)  # (d, r)
    return plain_lora(sd)


def test_the_first_30_percent_of_rows_are_gated_the_rest_shared():
    """rho = 0.3 by default: g = round(0.3 r) gated rows first; the others act for every domain with weight 1."""
    assert AdapterConfig().mask_fraction == 0.3 and AdapterConfig(rank=64).num_gated == 19
    m = adapted("masked", gates="sigmoid")
    randomize(m, gates=False)
    with torch.no_grad():
        for layer in masked_layers(m):
            layer.lora_gate["default"].fill_(-30.0)  # every domain's gated rows off (sigmoid(-30) < 1e-13)
    g = round(0.3 * RANK)
    lora = lora_with_unseen_rows(m, "shared")  # the first g columns of B zeroed
    x = random_inputs(m, batch=3)
    assert all(layer.lora_gate["default"].shape == (3, g) for layer in masked_layers(m))
    assert torch.allclose(run(m, x, [0, 1, 2]), run(lora, x, None), atol=1e-6)


def test_sigmoid_gates_stay_in_the_unit_interval_after_large_steps():
    """SGD at lr 1e3 drives unbounded gates far out of [0, 1] (checked below); sigmoid gates stay inside."""
    outside = {}
    for gates in ("unbounded", "sigmoid"):
        m = adapted("masked", gates=gates)
        randomize(m, gates=False)
        x = random_inputs(m, batch=3)
        target = torch.randn_like(run(m, x, [0, 1, 2]))
        params = list({id(p): p for layer in masked_layers(m) for p in layer.lora_gate.values()}.values())
        opt = torch.optim.SGD(params, lr=1e3)
        for _ in range(3):
            opt.zero_grad()
            (run(m, x, [0, 1, 2]) - target).square().mean().backward()
            opt.step()
        values = torch.cat([layer.gate_values("default").detach().flatten() for layer in masked_layers(m)])
        assert values.isfinite().all()
        outside[gates] = int(((values < 0) | (values > 1)).sum())
    assert outside["unbounded"] > 0 and outside["sigmoid"] == 0, outside


def test_the_sparsity_term_is_the_mean_gate_and_its_gradient_reaches_the_gates():
    """mask_l1 = mean sigmoid(logit) over the (tied-once) gates; d/dlogit = sigmoid' / count on every gate."""
    m = adapted("masked", gates="sigmoid")
    random_logits(m)
    gates = {id(p): p for layer in masked_layers(m) for p in layer.lora_gate.values()}
    count = sum(p.numel() for p in gates.values())
    value = mask_l1(m)
    assert torch.allclose(value, sum(torch.sigmoid(p).sum() for p in gates.values()) / count)
    value.backward()
    for p in gates.values():
        s = torch.sigmoid(p.detach())
        assert torch.allclose(p.grad, s * (1 - s) / count, atol=1e-9)


@pytest.mark.parametrize("gates", ["unbounded", "sigmoid"])
@pytest.mark.parametrize("unseen_mask", MASKS)
def test_unseen_mask_is_the_lora_with_the_gated_rows_scaled(unseen_mask, gates):
    """ones = the plain LoRA; shared = the LoRA with B's first g columns zeroed; mean = scaled by the mean gates.
    The same for domains=None, a batch of -1, the merged domain -1 and its exported plain LoRA (what `generate`
    loads without a domain).

    Checked red: with the pre-fix branch restored in MaskedLoraLinear._routed_update (domains None -> the update
    without any mask), the `mean` and `shared` cases fail on the domains=None line (4 of 6 red)."""
    m = adapted("masked", gates=gates, unseen_mask=unseen_mask)
    randomize(m)
    if gates == "sigmoid":
        random_logits(m)
    ones = adapted("masked", gates=gates)  # the same weights, the all-ones unseen mask
    ones.load_state_dict(m.state_dict())
    x = random_inputs(m, batch=2)
    expected = run(lora_with_unseen_rows(m, unseen_mask), x, None)
    assert torch.allclose(run(m, x, [-1, -1]), expected, atol=1e-6)
    set_domains(m, None)
    assert torch.allclose(m(**x)[0], expected, atol=1e-6)  # domains=None: every sample unseen
    assert torch.allclose(
        run(plain_lora(domain_lora_state_dict(m, -1, fold_scale=False)), x, None), expected, atol=1e-6
    )
    merge_adapters(m, -1)
    assert torch.allclose(run(m, x, [0, 1]), expected, atol=1e-5)  # merged: the routing is ignored
    assert torch.allclose(run(ones, x, [-1, -1]), expected, atol=1e-6) == (unseen_mask == "ones")


def test_reference_sampling_routes_every_sample_to_the_unseen_mean_mask(tiny_base):
    """Reference sampling (stage 2's sampler) runs the transformer under domains=None: with unseen_mask=mean it
    samples exactly as the model with every domain's gates set to their mean, merged (the mask applied explicitly).

    Checked red: with the pre-fix branch restored in MaskedLoraLinear._routed_update (domains None -> no mask),
    this test goes red."""
    from pm_lightning.models.backbone import FluxBackbone

    backbone = FluxBackbone.from_pretrained(tiny_base)
    add_adapters(backbone.transformer, AdapterConfig(kind="masked", rank=4, num_domains=3, unseen_mask="mean"))
    randomize(backbone.transformer)
    refs = {0: frame(-0.5), 3: frame(0.5)}

    def sample():
        return sample_reference_latents(backbone, ["a lego tower"], [refs], 2, 2, CELL, num_inference_steps=2)[0]

    routed = sample()
    with torch.no_grad():
        for layer in masked_layers(backbone.transformer):
            mean = layer.gate_values("default").mean(0).expand_as(layer.lora_gate["default"])  # the mean gates
            layer.lora_gate["default"].copy_(torch.logit(mean) if layer.gates == "sigmoid" else mean)  # every domain
    merge_adapters(backbone.transformer, 0)
    assert torch.allclose(routed, sample(), atol=1e-4)


def test_a_wrong_gate_or_unseen_option_names_the_key_and_the_choices():
    for key, choice in (("gates", "'sigmoid'"), ("unseen_mask", "'shared'")):
        with pytest.raises(ValueError, match=rf"AdapterConfig\.{key} must be one of \(.*{choice}.*'median'"):
            AdapterConfig(kind="masked", **{key: "median"})


def test_stage1_adds_the_weighted_sparsity_term_and_its_gradient_reaches_the_gates(tiny_base, batch):  # noqa: F811
    """Stage 1's loss with adapter.mask_l1 = w is the loss without it plus w * mask_l1 (same noise, same batch), so the
    gates' gradients differ by exactly w * d mask_l1 / d logit."""
    from pm_lightning.models.alignment import AlignmentConfig
    from pm_lightning.training.optim import OptimizerConfig
    from pm_lightning.training.stage1 import Stage1Module
    from tests.conftest import TRAIN_DOMAINS

    losses, grads = {}, {}
    for w in (0.0, 0.5):
        module = Stage1Module(
            base=tiny_base,
            domains=TRAIN_DOMAINS,
            adapter=AdapterConfig(kind="masked", rank=4, gates="sigmoid", mask_l1=w, num_domains=len(TRAIN_DOMAINS)),
            alignment=AlignmentConfig(enabled=False),
            optimizer=OptimizerConfig(name="adamw", lr=1e-3),
        )
        torch.manual_seed(0)  # the same A (peft draws it) in both modules
        module.configure_model()
        randomize(module.transformer, gates=False)  # B off zero: the flow-matching term reaches the gates too
        random_logits(module.transformer)
        module.train()
        losses[w] = module.training_step(batch, 0)
        losses[w].backward()
        grads[w] = {n: p.grad.clone() for n, p in module.transformer.named_parameters() if "lora_gate" in n}
        penalty = mask_l1(module.transformer)
    assert torch.allclose(losses[0.5] - losses[0.0], 0.5 * penalty.detach(), atol=1e-6)
    penalty.backward()  # adds d mask_l1 / d logit to the (w = 0.5) module's gate gradients
    for n, p in module.transformer.named_parameters():
        if "lora_gate" in n:
            extra = p.grad - grads[0.5][n]  # d mask_l1 / d logit
            assert extra.abs().min() > 0  # the term reaches every gate
            assert torch.allclose(grads[0.5][n] - 0.5 * extra, grads[0.0][n], atol=1e-6)
