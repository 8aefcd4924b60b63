"""Each private API of another library that pm_lightning leans on, exercised against the installed version.

These fail loudly when an upgrade changes one of them (`pm_lightning/core/compat.py`)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from pm_lightning.core import compat


def test_peft_custom_layer_registration_is_used_by_injection():
    built = []

    class Marked(nn.Module):
        def __init__(self, base_layer, adapter_name, **kwargs):
            super().__init__()
            self.base_layer = base_layer
            built.append(adapter_name)

        def forward(self, x):
            return self.base_layer(x)

    model = nn.Sequential(nn.Linear(4, 4))
    cfg = LoraConfig(r=2, target_modules=["0"])
    compat.register_custom_lora_layer(cfg, {nn.Linear: Marked})
    inject_adapter_in_model(cfg, model)
    assert built == ["default"] and isinstance(model[0], Marked)


def test_peft_change_is_reported():
    class NoHook:
        pass

    with pytest.raises(compat.CompatError, match="peft .*_register_custom_module"):
        compat.register_custom_lora_layer(NoHook(), {})


def test_wandb_logger_init_kwargs_are_where_we_write_them(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="p", offline=True, group="g")
    init = compat.wandb_init_kwargs(logger)
    assert init["project"] == "p" and init["group"] == "g"
    compat.set_wandb_dir(logger, str(tmp_path))
    assert logger.save_dir == str(tmp_path) and compat.wandb_init_kwargs(logger)["dir"] == str(tmp_path)


def test_lightning_change_is_reported():
    with pytest.raises(compat.CompatError, match="lightning .*_wandb_init"):
        compat.wandb_init_kwargs(object())


def test_extras_fail_with_an_install_hint(monkeypatch):
    from pm_lightning.core import extras

    assert extras.require("math", "a test") is __import__("math")
    monkeypatch.setitem(extras.EXTRAS, "no_such_module_pm", "quant")
    with pytest.raises(extras.MissingExtra, match=r"the quantized base needs .*pip install 'pm_lightning\[quant\]'"):
        extras.require("no_such_module_pm", "the quantized base")


def test_torch_total_norm_is_public():
    """torch >= 2.6 (the floor in pyproject.toml)."""
    assert torch.nn.utils.get_total_norm([torch.ones(4)]).item() == pytest.approx(2.0)


def test_torchao_nf4_config_is_where_we_read_it():
    pytest.importorskip("torchao")
    from pm_lightning.core.compat import nf4_weight_only_config

    config = nf4_weight_only_config()
    assert (config.block_size, config.scaler_block_size) == (64, 256)


def test_ddp_ignore_sets_what_ddp_reads():
    model = nn.Sequential(nn.Linear(2, 2))
    compat.ddp_ignore(model, ["0.weight"])
    compat.ddp_ignore(model, ["0.bias"])  # adds to what is there
    assert model._ddp_params_and_buffers_to_ignore == ["0.bias", "0.weight"]
