"""The frozen base's dtype is decided in one function, from the trainer's precision and strategy."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

from pm_lightning.training.precision import base_dtype, parse_dtype


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        ("32-true", torch.float32),
        ("32", torch.float32),
        (None, torch.float32),
        ("bf16-mixed", torch.bfloat16),
        ("bf16-true", torch.bfloat16),
        ("16-mixed", torch.float16),
        ("16-true", torch.float16),
        ("64-true", torch.float32),
    ],
)
def test_precision_decides_the_base_dtype(precision, expected):
    assert base_dtype(precision, SingleDeviceStrategy("cpu")) == expected
    assert base_dtype(precision, DDPStrategy()) == expected


def test_fsdp1_units_need_one_dtype_fsdp2_keeps_bf16_and_explicit_wins():
    from pm_lightning.training.strategies import FluxFSDP2Strategy

    assert base_dtype("bf16-mixed", FSDPStrategy()) == torch.float32
    assert base_dtype("bf16-mixed", FluxFSDP2Strategy()) == torch.bfloat16  # shards per parameter: mixed dtypes
    assert base_dtype("bf16-mixed", FSDPStrategy(), explicit="bfloat16") == torch.bfloat16
    assert base_dtype("32-true", None, explicit="float16") == torch.float16


def test_a_wrong_dtype_fails_at_load_naming_the_key():
    with pytest.raises(ValueError, match="model.init_args.dtype"):
        parse_dtype("fp8")
    from pm_lightning.training.stage1 import Stage1Module

    with pytest.raises(ValueError, match="model.init_args.dtype"):
        Stage1Module(dtype="half")


def test_the_module_reads_the_attached_trainer(tiny_base):
    import lightning as L

    from pm_lightning.training.stage1 import Stage1Module

    module = Stage1Module(base=tiny_base, domains=["lego"])
    assert module.model_dtype() == torch.float32  # no trainer: fp32
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    module.trainer = trainer
    assert module.model_dtype() == torch.bfloat16
