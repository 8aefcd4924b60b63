"""On a CUDA device: one stage-1 step in bf16-mixed keeps a bf16 base and fp32 adapters with finite gradients."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_bf16_mixed_step_on_cuda(tmp_path, tiny_base, tiny_shards):
    import lightning as L

    from pm_lightning.data.datamodule import ProcessDataModule
    from pm_lightning.models.adapters import AdapterConfig
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
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=data)
    base = [p for p in module.transformer.parameters() if not p.requires_grad]
    adapters = module.trainable_parameters()
    assert {p.dtype for p in base} == {torch.bfloat16} and {p.dtype for p in adapters} == {torch.float32}
    assert all(p.is_cuda for p in adapters)
