"""Tests written for mutants of models/adapter_routing.py that survived `make mutation` (docs/TESTING.md lists
them): each names the mutants it kills and was checked red by applying one of them by hand (the edit named) and
restoring the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pm_lightning.models.adapter_routing import check_domain, merge_adapters, set_domains, unmerge_adapters, use_domains
from pm_lightning.models.adapters import domain_layers
from tests.helpers import random_inputs
from tests.test_mutants_adapters import adapted


def routes(m) -> list:
    return [None if layer.domains is None else layer.domains.tolist() for layer in domain_layers(m)]


@pytest.mark.parametrize("target_modules", [None, ["single_transformer_blocks.0.proj_out"]])
def test_use_domains_restores_the_routing_it_found_on_every_layer(target_modules):
    """Inside the block every adapted layer routes to the block's domains; after it, to the ones set before (not to
    None), also on a model with a single adapted layer. Kills `_get_domains` 1, 3 (the previous routing read as None),
    5 and `set_domains` 25, 29 (`layers[1]`: an IndexError with one layer); checked red with `layers[0].domains if
    layers and False` and with `layers[1]` in `_get_domains`."""
    m = adapted("masked", target_modules=target_modules)
    set_domains(m, torch.tensor([1, 0]))
    with use_domains(m, torch.tensor([2, 2])):
        assert routes(m) == [[2, 2]] * len(domain_layers(m))
    assert routes(m) == [[1, 0]] * len(domain_layers(m)) and len(domain_layers(m)) >= 1


def test_domains_are_stored_as_long_and_a_wrong_shape_is_named():
    """An int32 tensor or a NumPy-like list is stored as int64 (the layers index their tables with it); a 2-D
    batch is refused with its shape. Kills `set_domains` 6 (`dtype=None`), 11, 12 (the message); checked red with
    `dtype=None`."""
    m = adapted("masked")
    set_domains(m, torch.tensor([2, -1], dtype=torch.int32))
    assert {layer.domains.dtype for layer in domain_layers(m)} == {torch.long}
    with pytest.raises(ValueError, match=r"^domains must be a 1-D LongTensor \(B,\), got shape \(2, 1\)$"):
        set_domains(m, torch.tensor([[0], [1]]))


def test_domains_stay_on_the_host_for_a_model_on_the_meta_device():
    """A model built on the meta device (the real configs' dry builds) keeps the routing on the CPU: a meta tensor
    has no values to check or index with. Kills `set_domains` 32, 34, 35, 36 (moved to meta); checked red with
    `device.type == "meta"`. (31 and 33, never moving the domains to the adapters' device, are GPU-only: on this
    CPU-only machine the device is the CPU already.)"""
    m = adapted("masked").to("meta")
    set_domains(m, torch.tensor([0, 1]))
    assert {layer.domains.device.type for layer in domain_layers(m)} == {"cpu"}


def test_domain_bounds_and_their_message_on_a_model_with_and_without_adapters():
    """-1 (unseen) and C - 1 are valid domains, C is not, and the message names the valid range; a module without
    an adapter config has one domain. Kills `check_domain` 4, 5 (the bounds), 6, 7, 8 (the message) and
    `_num_domains` 6, 10, 12 (no config: an AttributeError or 2 domains); checked red with `<= c` and with `else 2`."""
    m = adapted("masked")  # 3 domains
    for ok in (-1, 0, 2):
        check_domain(m, ok)
    with pytest.raises(ValueError, match=r"^domain 3 out of range: expected -1 \(unseen\) or 0\.\.2$"):
        check_domain(m, 3)
    bare = nn.Linear(2, 2)
    check_domain(bare, 0)
    with pytest.raises(ValueError, match=r"^domain 1 out of range: expected -1 \(unseen\) or 0\.\.0$"):
        check_domain(bare, 1)


def test_merging_a_second_domain_replaces_the_first():
    """merge(0) then merge(1) gives exactly domain 1's merged model (the first merge undone, not stacked), and
    unmerging gives back the base weights. Kills `merge_adapters` 5, 9, 10, 11, 12, 13 (the previous merge not
    undone) and 16 (the merged domain not recorded); checked red with `is None` and with
    `transformer.pm_merged_domain = None`."""
    m = adapted("masked")
    x = random_inputs(m)
    base = {k: v.clone() for k, v in m.state_dict().items() if "lora" not in k}
    merge_adapters(m, 1)
    only_one = m(**x)[0]  # (B, N, 64)
    unmerge_adapters(m)
    merge_adapters(m, 0)
    merge_adapters(m, 1)
    assert m.pm_merged_domain == 1
    assert torch.allclose(m(**x)[0], only_one, atol=1e-5)
    unmerge_adapters(m)
    after = {k: v for k, v in m.state_dict().items() if "lora" not in k}
    assert all(torch.allclose(after[k], base[k], atol=1e-5) for k in base)
