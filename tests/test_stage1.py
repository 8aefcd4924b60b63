"""Stage1Module: the loss terms, what trains, ablation rows as configuration, trainable-only checkpoints."""

from __future__ import annotations

import pytest
import torch

from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.pixels import float_pixels
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapters import adapter_parameters
from pm_lightning.models.alignment import AlignmentConfig
from pm_lightning.training.optim import OptimizerConfig
from pm_lightning.training.stage1 import Stage1Module
from tests.conftest import TRAIN_DOMAINS


@pytest.fixture(scope="module")
def batch(tiny_shards) -> dict:
    dm = ProcessDataModule(
        tiny_shards["train"], domains=TRAIN_DOMAINS, resolution=96, batch_size=4, num_workers=0, shuffle_buffer=16
    )
    return float_pixels(next(iter(dm.train_dataloader())))  # [-1, 1], as the Trainer's batch-transfer hook makes it


def make_module(tiny_base, kind="masked", align=True, **kw) -> Stage1Module:
    module = Stage1Module(
        base=tiny_base,
        domains=TRAIN_DOMAINS,
        adapter=AdapterConfig(kind=kind, rank=4),
        alignment=AlignmentConfig(enabled=align),
        optimizer=OptimizerConfig(name="adamw", lr=1e-3),
        **kw,
    )
    module.configure_model()
    return module


def randomize_adapters(module: Stage1Module) -> None:
    """Move B off its zero initialisation so the adapted model differs from the base."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.transformer.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.normal_(0, 0.02)


@pytest.mark.parametrize("kind", ["lora", "asymmetric", "masked"])
@pytest.mark.parametrize("align", [False, True])
def test_every_ablation_row_trains_only_its_adapters(tiny_base, batch, kind, align):
    module = make_module(tiny_base, kind, align)
    randomize_adapters(module)
    module.train()
    terms = module.losses(batch, step=0)
    assert terms["fm"].shape == (4,) and torch.isfinite(terms["fm"]).all()
    assert ("align" in terms) == align
    loss = terms["fm"].mean() + (terms["lambda"] * terms["align"]).mean() if align else terms["fm"].mean()
    loss.backward()
    trainable = {id(p) for p in adapter_parameters(module.transformer)}
    assert trainable and {id(p) for p in module.parameters() if p.requires_grad} == trainable
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter_parameters(module.transformer))
    assert all(p.grad is None for p in module.parameters() if id(p) not in trainable)


def test_alignment_term_matches_lambda_schedule_and_vanishes_at_init(tiny_base, batch):
    module = make_module(tiny_base, "masked", True)
    module.train()
    terms = module.losses(batch, step=3)
    assert torch.equal(terms["align"], torch.zeros(4))  # B = 0: the student is the teacher
    assert torch.allclose(terms["lambda"], torch.full((4,), 0.5))  # lambda0 * constant schedule
    randomize_adapters(module)
    assert (module.losses(batch, step=3)["align"] > 0).all()


def test_noise_and_timesteps_depend_only_on_seed_and_step(tiny_base, batch):
    module = make_module(tiny_base, "lora", False)
    x0 = torch.zeros(2, 36, 64)
    n1, t1 = module.draw_noise(x0, 5)
    n2, t2 = module.draw_noise(x0, 5)
    n3, _ = module.draw_noise(x0, 6)
    assert torch.equal(n1, n2) and torch.equal(t1, t2) and not torch.equal(n1, n3)


def test_validation_loss_is_deterministic(tiny_base, batch):
    module = make_module(tiny_base, "masked", True)
    module.eval()
    with torch.no_grad():
        a = module.losses(batch, step=10**6)["fm"]
        b = module.losses(batch, step=10**6)["fm"]
    assert torch.equal(a, b)


def test_checkpoint_keeps_only_trainable_weights(tiny_base):
    module = make_module(tiny_base, "masked", True)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    kept = set(checkpoint["state_dict"])
    trainable = {name for name, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert kept == trainable and all("lora" in k for k in kept)
    assert module.hparams["adapter"]["num_domains"] == len(TRAIN_DOMAINS)


def test_noise_key_is_the_step_or_one_per_micro_batch_under_accumulation():
    from types import SimpleNamespace

    from pm_lightning.training.stage1 import Stage1Module

    module = Stage1Module(domains=["lego"])
    assert [module.noise_key(i) for i in range(3)] == [0, 0, 0]  # no trainer: step 0
    keys = []
    for step in range(3):  # batches 2*step and 2*step + 1 make optimizer step `step` (k = 2)
        module._trainer = SimpleNamespace(accumulate_grad_batches=2, global_step=step)
        keys += [module.noise_key(2 * step), module.noise_key(2 * step + 1)]
    assert keys == [0, 1, 2, 3, 4, 5]  # distinct per micro-batch
    module._trainer = SimpleNamespace(accumulate_grad_batches=1, global_step=7)
    assert module.noise_key(7) == 7  # without accumulation: the optimizer step, as before
    module._trainer = None
