"""Stage 1's training step as Lightning sees it: the terms logged under their names (and on the progress bar), the
mask's L1 pull in the loss, and the loss terms the non-finite warning names. Written for the mutants of
`training/stage1.py` that the older tests let through (docs/TESTING.md, "Mutation testing"); each test was checked red
by hand against the mutants its docstring names (the mutant's edit applied to the module, the test run and seen
failing, the module restored with `git checkout`)."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.pixels import float_pixels
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.alignment import AlignmentConfig, align_blocks, resolve_layers
from pm_lightning.training.optim import OptimizerConfig
from pm_lightning.training.stage1 import Stage1Module
from tests.conftest import TRAIN_DOMAINS

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`", "ignore::UserWarning")


def data(tiny_shards) -> ProcessDataModule:
    return ProcessDataModule(
        tiny_shards["train"], domains=TRAIN_DOMAINS, resolution=96, batch_size=4, num_workers=0, shuffle_buffer=16
    )


def masked_stage1(tiny_base, mask_l1: float, align: bool, layers: list[int] | None = None) -> Stage1Module:
    """A masked stage-1 module (rank 4, constant lambda = 0.5) whose B is moved off zero, so alignment is not 0."""
    module = Stage1Module(
        base=tiny_base,
        domains=TRAIN_DOMAINS,
        adapter=AdapterConfig(kind="masked", rank=4, mask_l1=mask_l1),
        alignment=AlignmentConfig(enabled=align, lambda0=0.5, layers=layers),
        optimizer=OptimizerConfig(name="adamw", lr=1e-3),
    )
    module.configure_model()  # the Trainer's own call then finds the backbone built and returns
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.transformer.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.normal_(0, 0.02)
    return module


def warned_terms(module: Stage1Module, caplog) -> str:
    """The loss terms the non-finite guard's warning names (it reads the last training step's terms)."""
    with caplog.at_level(logging.WARNING, logger="pm_lightning.training.nonfinite"):
        assert module.nonfinite.check(module, torch.tensor(float("nan"))) is False
    return caplog.records[-1].getMessage()


def test_a_fit_step_logs_each_term_by_name_and_the_total_is_fm_plus_lambda_align_plus_the_weighted_mask_l1(
    tiny_base, tiny_shards, tmp_path, caplog
):
    """One real optimizer step under a Trainer (mask_l1 = 0.5, between 0 and 1): loss/fm, loss/align, lambda,
    loss/mask_l1 and loss/total are logged, loss/fm and loss/align on the progress bar, and loss/total equals
    loss/fm + lambda * loss/align + 0.5 * loss/mask_l1 (lambda constant here, so the mean of the products is the
    product of the means); the non-finite warning then names the same fm, align and total.
    Checked red with: `self.log(None, loss, ...)` (no loss/fm), `prog_bar=None` for loss/align, `mask_l1 > 1` (no
    L1 term), `loss - mask_l1 * l1`, `self.log(None, l1)`, `self.log(l1)`, and `terms["FM"]` / `"LOSS/TOTAL"` in
    `last_terms`."""
    module = masked_stage1(tiny_base, mask_l1=0.5, align=True)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data(tiny_shards))
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {"loss/fm", "loss/align", "lambda", "loss/mask_l1", "loss/total"} <= set(m)
    assert {"loss/fm", "loss/align"} <= set(trainer.progress_bar_metrics)
    assert m["loss/align"] > 0 and m["loss/mask_l1"] > 0 and m["lambda"] == pytest.approx(0.5)
    expected = m["loss/fm"] + m["lambda"] * m["loss/align"] + 0.5 * m["loss/mask_l1"]
    assert m["loss/total"] == pytest.approx(expected, rel=1e-5)
    fm, align, total = (f"{m[k]:.4g}" for k in ("loss/fm", "loss/align", "loss/total"))
    assert f"loss/fm={fm}, loss/align={align}, loss/total={total}" in warned_terms(module, caplog)


def test_without_alignment_the_step_is_flow_matching_alone_and_the_warning_names_align_as_zero(
    tiny_base, tiny_shards, caplog
):
    """Alignment off, mask_l1 0: the step's loss is the batch mean of the flow-matching term, and the non-finite
    warning names loss/align=0 (no alignment term), not a made-up value.
    Checked red with `terms.get("align", 1.0)` and `terms.get("align", None)` in `last_terms`."""
    module = masked_stage1(tiny_base, mask_l1=0.0, align=False).train()
    batch = float_pixels(next(iter(data(tiny_shards).train_dataloader())))  # [-1, 1], as the Trainer makes it
    fm = module.losses(batch, step=0)["fm"].detach()  # (B,), the first step's noise key
    loss = module.training_step(batch, 0)
    assert loss.item() == pytest.approx(fm.mean().item(), rel=1e-6)
    total = f"{loss.item():.4g}"
    assert f"loss/fm={total}, loss/align=0, loss/total={total}" in warned_terms(module, caplog)


def test_the_configured_alignment_layers_are_the_blocks_the_step_taps(tiny_base, tiny_shards):
    """With `alignment.layers: [1]` (the tiny model has 2 + 4 blocks, whose default layers are [0, 1, 2, 3]), a
    training step runs blocks 0 and 1 twice (the teacher stops after block 1, the student runs through) and the later
    blocks once, and the student's features at block 1 are what the step aligns.
    Checked red with `resolve_layers(num_blocks, None)` and `resolve_layers(num_blocks, )` in `AlignmentConfig.resolve`
    (models/alignment.py): the default layers are tapped instead."""
    module = masked_stage1(tiny_base, mask_l1=0.0, align=True, layers=[1]).train()
    batch = float_pixels(next(iter(data(tiny_shards).train_dataloader())))
    blocks = align_blocks(module.transformer)
    calls = [0] * len(blocks)
    hooks = [
        b.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1)) for i, b in enumerate(blocks)
    ]
    terms = module.losses(batch, step=0)
    for h in hooks:
        h.remove()
    assert len(blocks) == 6 and resolve_layers(len(blocks)) != [1]  # the default would tap other blocks
    assert calls == [2, 2, 1, 1, 1, 1] and (terms["align"] > 0).all()
