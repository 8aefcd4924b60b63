"""Representation alignment: layer mapping, distance math, schedules, hooks, teacher early stop, gradients."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from pm_lightning.models import alignment as al
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_routing import adapters_disabled, set_domains
from pm_lightning.models.adapters import adapter_parameters, add_adapters
from tests.helpers import random_inputs, tiny_transformer

N_BLOCKS = 5  # tests.helpers: 2 double + 3 single


# ---------------------------------------------------------------------------------------------- fixtures


def adapted(kind: str = "lora", nonzero: bool = True, seed: int = 0):
    """Tiny transformer with adapters, samples routed to domains (0, 1); `nonzero` fills zero inits (LoRA B) randomly."""
    model = tiny_transformer(seed)
    add_adapters(model, AdapterConfig(kind=kind, rank=4, num_domains=2))
    set_domains(model, torch.tensor([0, 1]))
    if nonzero:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in adapter_parameters(model):
                if not p.any():
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def block_index(name: str, n_double: int = 2) -> int | None:
    """Index in the concatenated block list of a parameter name, None outside the blocks."""
    if m := re.match(r"single_transformer_blocks\.(\d+)\.", name):
        return n_double + int(m.group(1))
    if m := re.match(r"transformer_blocks\.(\d+)\.", name):
        return int(m.group(1))
    return None


def adapter_grads(model) -> dict[str, torch.Tensor | None]:
    ids = {id(p) for p in adapter_parameters(model)}
    return {n: p.grad for n, p in model.named_parameters() if id(p) in ids}


# ---------------------------------------------------------------------------------------------- layers


def test_resolve_layers_flux_dev_is_identity():
    assert al.resolve_layers(57) == [4, 9, 14, 19, 29]


@pytest.mark.parametrize("n", range(1, 13))
def test_resolve_layers_tiny_depths_are_unique_valid(n):
    layers = al.resolve_layers(n)
    assert layers == sorted(set(layers)) and layers and all(0 <= i < n for i in layers)


def test_resolve_layers_tiny_values_and_explicit():
    assert al.resolve_layers(5) == [0, 1, 2]
    assert al.resolve_layers(6) == [0, 1, 2, 3]
    assert al.resolve_layers(5, [3, 1, 3]) == [1, 3]
    with pytest.raises(ValueError, match="bad: \\[5\\]"):
        al.resolve_layers(5, [1, 5])


def test_config_validation_names_field():
    assert al.AlignmentConfig().resolve(57) == [4, 9, 14, 19, 29]
    for kwargs, field in [
        (dict(lambda0=-1), "lambda0"),
        (dict(gamma=-0.1), "gamma"),
        (dict(schedule="nope"), "schedule"),
        (dict(layers=[1, 1]), "layers"),
    ]:
        with pytest.raises(ValueError, match=f"AlignmentConfig.{field}"):
            al.AlignmentConfig(**kwargs)


# ---------------------------------------------------------------------------------------------- math


def test_distance_zero_on_identical_features():
    h = torch.randn(3, 7, 16)
    assert torch.equal(al.layer_distance(h, h.clone()), torch.zeros(3))


def test_distance_hand_computed():
    e1, e2 = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])  # (1, 1, 2)
    # orthogonal: 1 - cos = 1, MSE = mean(1, 1) = 1
    assert al.layer_distance(e1, e2, gamma=0.1).item() == pytest.approx(1.1)
    # same direction, scaled x2: cos term 0, MSE = (3^2 + 4^2) / 2 = 12.5
    h = torch.tensor([[[3.0, 4.0]]])
    assert al.layer_distance(h, 2 * h, gamma=0.1).item() == pytest.approx(1.25)
    # opposite: 1 - cos = 2, MSE = (2^2 + 0) / 2 = 2
    assert al.layer_distance(e1, -e1, gamma=0.5).item() == pytest.approx(3.0)


def test_distance_matches_cosine_similarity_form_per_sample():
    g = torch.Generator().manual_seed(0)
    ht, hs = torch.randn(4, 9, 8, generator=g), torch.randn(4, 9, 8, generator=g)
    ref = (1 - F.cosine_similarity(ht, hs, dim=-1)).mean(-1) + 0.1 * ((ht - hs) ** 2).mean(-1).mean(-1)
    d = al.layer_distance(ht, hs, 0.1)
    assert d.shape == (4,)
    torch.testing.assert_close(d, ref)
    hs2 = hs.clone()
    hs2[1] += 1.0  # changing sample 1 leaves the others alone
    d2 = al.layer_distance(ht, hs2, 0.1)
    assert torch.equal(d2[[0, 2, 3]], d[[0, 2, 3]]) and d2[1] != d[1]


def test_alignment_loss_is_mean_over_layers():
    g = torch.Generator().manual_seed(0)
    t = {i: torch.randn(2, 5, 4, generator=g) for i in (0, 3)}
    s = {i: torch.randn(2, 5, 4, generator=g) for i in (0, 3)}
    expected = (al.layer_distance(t[0], s[0]) + al.layer_distance(t[3], s[3])) / 2
    torch.testing.assert_close(al.alignment_loss(s, t, 0.1), expected)
    with pytest.raises(ValueError, match="must match"):
        al.alignment_loss({0: s[0]}, t)
    with pytest.raises(ValueError, match="differ in shape"):
        al.alignment_loss({0: s[0][:, :3], 3: s[3]}, t)  # sub-sampled student tokens


@pytest.mark.parametrize(
    "name, values",
    [
        ("constant", (1, 1, 1)),
        ("linear", (1, 0.5, 0)),
        ("cosine", (1, math.sqrt(0.5), 0)),
        ("sigmoid", (1 / (1 + math.exp(-5)), 0.5, 1 / (1 + math.exp(5)))),
    ],
)
def test_schedules(name, values):
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(al.schedule_value(t, name), torch.tensor(values, dtype=torch.float32))
    cfg = al.AlignmentConfig(schedule=name, lambda0=0.5)
    torch.testing.assert_close(al.alignment_weight(t, cfg), 0.5 * torch.tensor(values, dtype=torch.float32))


def test_unknown_schedule_lists_known():
    with pytest.raises(KeyError, match="constant"):
        al.schedule_value(torch.zeros(1), "warp")


# ---------------------------------------------------------------------------------------------- hooks + teacher


def test_teacher_early_stop_matches_full_pass_and_skips_later_blocks():
    model, layers = adapted(), [0, 2]
    inputs = random_inputs(model)
    with adapters_disabled(model), torch.no_grad(), al.capture_features(model, layers) as full:
        model(**inputs)
    calls = {i: 0 for i in range(N_BLOCKS)}
    handles = [
        b.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, b in enumerate(al.align_blocks(model))
    ]
    handles.append(model.proj_out.register_forward_hook(lambda m, a, o: calls.__setitem__("out", 1)))
    teacher = al.teacher_features(model, inputs, layers)
    for h in handles:
        h.remove()
    assert sorted(teacher) == layers and all(torch.equal(teacher[i], full[i]) for i in layers)
    assert calls == {0: 1, 1: 1, 2: 1, 3: 0, 4: 0}  # stops after block 2, never reaches proj_out
    assert teacher[0].shape == (2, 9, model.inner_dim)  # image tokens only
    assert not teacher[0].requires_grad


def test_teacher_is_base_model_and_cleans_up():
    model = adapted()
    inputs = random_inputs(model)
    with torch.no_grad():
        student_out = model(**inputs)[0]
    teacher = al.teacher_features(model, inputs, [1])
    with al.capture_features(model, [1]) as student:
        after = model(**inputs)[0]
    assert torch.equal(after, student_out)  # adapters re-enabled
    assert not torch.equal(teacher[1], student[1])  # non-zero adapters change the features
    assert all(not b._forward_hooks for b in al.align_blocks(model))  # hooks removed


def test_teacher_cleans_up_on_error():
    model = adapted()
    inputs = random_inputs(model)
    with torch.no_grad():
        before = model(**inputs)[0]
    bad = dict(inputs, hidden_states=inputs["hidden_states"][..., :10])  # wrong channel count
    with pytest.raises(RuntimeError):
        al.teacher_features(model, bad, [1])
    assert all(not b._forward_hooks for b in al.align_blocks(model))
    with torch.no_grad():
        assert torch.equal(model(**inputs)[0], before)


def test_student_capture_ignores_nested_teacher_pass():
    model = adapted()
    inputs = random_inputs(model)
    with al.capture_features(model, [0, 1]) as student:
        teacher = al.teacher_features(model, inputs, [0, 1])
        model(**inputs)
    assert student[1].requires_grad and not torch.equal(student[1], teacher[1])


# ---------------------------------------------------------------------------------------------- gradients


def align_only_backward(model, layers, checkpointing: bool = False) -> torch.Tensor:
    inputs = random_inputs(model)
    teacher = al.teacher_features(model, inputs, layers)
    if checkpointing:
        model.train().enable_gradient_checkpointing()
    with al.capture_features(model, layers) as student:
        model(**inputs)
    loss = al.alignment_loss(student, teacher, 0.1)  # (B,)
    (al.alignment_weight(inputs["timestep"], al.AlignmentConfig()) * loss).mean().backward()
    return loss.detach()


def test_zero_init_adapters_give_exactly_zero_loss_and_grad():
    model = adapted(nonzero=False)
    loss = align_only_backward(model, al.resolve_layers(N_BLOCKS))
    assert torch.equal(loss, torch.zeros(2))
    assert all(g is None or not g.any() for g in adapter_grads(model).values())


@pytest.mark.parametrize("kind", ["lora", "masked", "asymmetric"])
def test_alignment_alone_trains_adapters_up_to_deepest_layer(kind):
    model, layers = adapted(kind), [1, 2]
    loss = align_only_backward(model, layers)
    assert (loss > 0).all()
    grads = adapter_grads(model)
    nonzero_blocks = {block_index(n) for n, g in grads.items() if g is not None and g.any()}
    assert nonzero_blocks == {0, 1, 2}  # every block up to the deepest hooked one, none after
    if kind == "lora":  # every A and B matrix at or before block 2 gets gradient
        early = {n: g for n, g in grads.items() if block_index(n) is not None and block_index(n) <= 2}
        assert early and all(g is not None and g.any() for g in early.values())


def test_student_gradient_survives_gradient_checkpointing():
    layers = [1, 3]
    plain, ckpt = adapted(), adapted()
    align_only_backward(plain, layers)
    align_only_backward(ckpt, layers, checkpointing=True)
    for (n, g1), g2 in zip(adapter_grads(plain).items(), adapter_grads(ckpt).values()):
        if g1 is None:
            assert g2 is None or not g2.any(), n
        else:
            torch.testing.assert_close(g1, g2, msg=n)
