"""Tests written for mutants of models/adapter_state.py and core/run_layout.py that survived `make mutation`
(docs/TESTING.md lists them): each names the mutants it kills and was checked red by applying one of them by hand
(the edit named) and restoring the file."""

from __future__ import annotations

import re

import pytest
import torch

from pm_lightning.core.run_layout import RunDir, sample_sheet, step_tag
from pm_lightning.models.adapter_state import (
    adapter_state_dict,
    domain_lora_state_dict,
    load_adapter_state_dict,
    mask_l1,
)
from pm_lightning.models.adapters import tuner_layers
from tests.helpers import tiny_transformer
from tests.test_mutants_adapters import adapted


def test_a_state_dict_with_peft_s_adapter_names_loads_into_the_adapters():
    """The keys of `transformer.state_dict()` carry peft's adapter name (`.default`); loading them gives back the
    adapters they came from. Kills `load_adapter_state_dict` 6 (the name replaced by another string instead of
    removed: every key unexpected); checked red with `_ADAPTER_NAME.sub("XXXX", k)`."""
    source, target = adapted("masked"), adapted("masked")
    named = {k: v for k, v in source.state_dict().items() if "lora_" in k}
    assert any(".default" in k for k in named)
    with torch.no_grad():
        for p in adapter_state_dict(target).values():
            p.zero_()
    load_adapter_state_dict(target, named)
    want, got = adapter_state_dict(source), adapter_state_dict(target)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_mismatch_names_the_first_five_keys_of_each_side_and_counts_them_all():
    """Seven keys missing and six unexpected: the message lists five of each and gives both counts. Kills
    `load_adapter_state_dict` 19, 20 (six listed); checked red with `missing[:6]`."""
    m = adapted("masked")
    sd = adapter_state_dict(m)
    keys = sorted(sd)
    bad = {k: v for k, v in sd.items() if k not in keys[:7]} | {f"extra.{i}.weight": torch.zeros(1) for i in range(6)}
    with pytest.raises(KeyError) as err:
        load_adapter_state_dict(m, bad)
    found = re.search(r"missing \[(.*?)\] \(7\), unexpected \[(.*?)\] \(6\)", str(err.value))
    assert found and [side.count("'") for side in found.groups()] == [10, 10]


def test_a_plain_lora_s_domain_state_dict_is_its_own_scaled_B():
    """For the domain-free `lora` kind, any domain's file is each layer's own A and scaling x B. Kills
    `domain_lora_state_dict` 12 (every layer asked for a domain B: the plain layer has none); checked red with
    `if is_domain or True`."""
    m = adapted("lora")
    sd = domain_lora_state_dict(m, 0)
    bs = [lyr.lora_B["default"].weight * lyr.scaling["default"] for lyr in tuner_layers(m)]  # (d, r) each
    got = [v for k, v in sd.items() if k.endswith("lora_B.weight")]
    assert len(got) == len(bs) > 0 and all(any(torch.allclose(g, b) for b in bs if b.shape == g.shape) for g in got)


def test_without_gates_the_sparsity_term_is_zero_on_the_adapters_device():
    """No gates: the term is a zero on the adapters' device (the meta device stands in for a GPU here), or on the
    default device when the model has no adapter at all. Kills `mask_l1` 9, 16, 19 (the zero made on the default
    device) and 12, 20 (a model without adapters: StopIteration, or None's device); checked red with
    `device=None` and with `p is not None or True`."""
    assert mask_l1(adapted("lora").to("meta")).device.type == "meta"
    zero = mask_l1(tiny_transformer(0))
    assert zero.device.type == "cpu" and float(zero) == 0.0


def test_the_newest_sample_sheet_is_the_last_by_name(tmp_path):
    """Without the final sheet, the newest one by name is shown: the last of three. Kills `RunDir.latest_sample_sheet`
    14 (`sheets[+1]`); checked red with it."""
    run = RunDir(tmp_path)
    run.samples.mkdir(parents=True)
    names = [sample_sheet(run.samples, step_tag(s)) for s in (200, 400, 600)]
    for path in names:
        path.write_bytes(b"")
    assert run.latest_sample_sheet() == names[-1]
