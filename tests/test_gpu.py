"""On a CUDA device: one stage-1 step in bf16-mixed keeps a bf16 base and fp32 adapters with finite gradients; the
quantized bases (int8 / fp8 / nf4) train under bf16-mixed."""

from __future__ import annotations

import lightning as L
import pytest
import torch

pytestmark = pytest.mark.gpu


def test_bf16_mixed_step_on_cuda(tmp_path, tiny_base, tiny_shards):
    from pm_lightning.data.datamodule import ProcessDataModule
    from pm_lightning.models.adapter_config import AdapterConfig
    from pm_lightning.training.stage1 import Stage1Module
    from tests.conftest import TRAIN_DOMAINS

    module = Stage1Module(base=tiny_base, domains=TRAIN_DOMAINS, adapter=AdapterConfig(kind="masked", rank=4))
    data = ProcessDataModule(
        train_shards=tiny_shards["train"],
        domains=TRAIN_DOMAINS,
        resolution=96,
        batch_size=2,
        num_workers=0,
        samples_per_epoch=4,
    )
    placed = Placement()
    trainer = gpu_trainer(tmp_path, max_steps=1, callbacks=[placed])
    trainer.fit(module, datamodule=data)
    base = [p for p in module.transformer.parameters() if not p.requires_grad]
    adapters = module.trainable_parameters()
    assert {p.dtype for p in base} == {torch.bfloat16} and {p.dtype for p in adapters} == {torch.float32}
    assert placed.steps == [True]  # trained on the GPU (Lightning's teardown moves the model to CPU after fit)


@pytest.mark.parametrize("mode", ["int8", "fp8", "nf4"])
def test_quantized_base_trains_on_cuda_in_bf16_mixed(tmp_path, tiny_base, tiny_shards, mode):
    """The Lightning path on a GPU: configure_model quantizes on the CPU under the GPU default-device context, the
    quantized base moves to the GPU, a bf16-mixed step trains the fp32 adapters. fp8 needs compute capability 8.9."""
    pytest.importorskip("torchao")
    if mode == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 weight-only: an Ada / Hopper GPU (compute capability >= 8.9)")

    from pm_lightning.data.datamodule import ProcessDataModule
    from pm_lightning.models.adapter_config import AdapterConfig
    from pm_lightning.models.quantize import quantized_linears
    from pm_lightning.training.stage1 import Stage1Module
    from tests.conftest import TRAIN_DOMAINS

    module = Stage1Module(
        base=tiny_base, domains=TRAIN_DOMAINS, adapter=AdapterConfig(kind="masked", rank=4), quantize=mode
    )
    data = ProcessDataModule(
        train_shards=tiny_shards["train"], domains=TRAIN_DOMAINS, resolution=96, batch_size=2, num_workers=0
    )
    placed = Placement()
    trainer = gpu_trainer(tmp_path, max_steps=2, callbacks=[placed])
    trainer.fit(module, datamodule=data)
    assert quantized_linears(module.transformer)
    assert placed.steps == [True, True]  # the fp32 adapters trained on the GPU
    assert all(p.dtype == torch.float32 for p in module.trainable_parameters())
    assert torch.isfinite(trainer.callback_metrics["loss/total"])
    lora_b = [p for n, p in module.transformer.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: two steps moved it


class Placement(L.Callback):
    """Records, after each training step, whether every trainable parameter is on CUDA (read during training: after
    fit, Lightning's single-device teardown has moved the model to CPU memory)."""

    def __init__(self):
        self.steps: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.steps.append(all(p.is_cuda for p in pl_module.trainable_parameters()))


def gpu_trainer(tmp_path, max_steps: int, callbacks=()):
    """One GPU, bf16-mixed, no logger or checkpoints: the Lightning path of the gpu tier."""
    return L.Trainer(
        callbacks=list(callbacks),
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
