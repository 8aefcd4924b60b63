"""What `make mutation` found untested in training/stage2.py (docs/TESTING.md, "Mutation testing"): what a real
training step logs and keeps for the non-finite guard, the warning when a resumed checkpoint was trained on
another stage-1 file, and the latent-cache refusal's message.

Each test was seen red by hand with the mutants it names (the mutant's diff from
build/mutation/training.stage2/summary.json applied to the module, the test run, the module restored)."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch

from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.lora_files import file_sha256
from pm_lightning.training.stage2 import Stage2Module
from tests.conftest import TRAIN_DOMAINS
from tests.test_stage2 import batch, make_module, stage1_file  # noqa: F401 - batch and stage1_file are fixtures


class StepLoss(pl.Callback):
    """The loss of the batch the step is about to train on, from `losses` with the step's noise key."""

    def on_train_batch_start(self, trainer, module, step_batch, batch_idx):
        with torch.no_grad():
            self.expected = module.losses(step_batch, module.noise_key(batch_idx))["fm"].mean()


def test_a_training_step_logs_the_mean_flow_loss_and_keeps_it_for_the_non_finite_guard(tiny_base, tiny_shards):
    """Mutants training_step 17 (`prog_bar=False`), 22 (`loss/total` renamed) and 24 (`last_terms = None`: the
    non-finite stop message would name no term): one real optimizer step through the Trainer."""
    module = make_module(tiny_base)
    dm = ProcessDataModule(
        tiny_shards["train"], domains=TRAIN_DOMAINS, resolution=96, batch_size=2, num_workers=0, shuffle_buffer=16
    )
    probe = StepLoss()
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[probe],
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    assert torch.allclose(logged["loss/fm"], probe.expected) and torch.equal(logged["loss/total"], logged["loss/fm"])
    assert "loss/fm" in trainer.progress_bar_metrics
    assert module.last_terms.keys() == {"loss/fm"} and torch.allclose(module.last_terms["loss/fm"], probe.expected)


def test_resuming_warns_when_the_checkpoint_was_trained_on_another_stage1_file(tiny_base, stage1_file):  # noqa: F811
    """Mutants on_load_checkpoint 7 (a checkpoint without hyper-parameters crashes), 9 and 13 (the recorded or
    own sha256 read under another name: every resume warns), 17 (`stacklevel=None`) and __init__ 43 (the file's
    sha256 not recorded)."""
    module = Stage2Module(base=tiny_base, domains=TRAIN_DOMAINS, stage1=stage1_file, adapter=AdapterConfig("lora", 4))
    same = {"hyper_parameters": dict(module.hparams), "state_dict": {}}  # what Lightning saved from this run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.on_load_checkpoint(same)
    other = {"hyper_parameters": {**module.hparams, "stage1_sha256": "0" * 64}, "state_dict": {}}
    with pytest.warns(UserWarning, match="stage-1 file .*unseen.safetensors.* differs from the one this checkpoint"):
        module.on_load_checkpoint(other)
    with pytest.warns(UserWarning, match="differs"):  # an old checkpoint that recorded nothing
        module.on_load_checkpoint({"state_dict": {}})
    assert module.hparams["stage1_sha256"] == file_sha256(stage1_file)  # what the exports record (docs/ARCHITECTURE.md)


def test_the_new_lora_is_domain_free_whatever_num_domains_the_config_gives(tiny_base):
    """Mutant __init__ 32 (`replace(adapter, )`: the config's num_domains kept). A plain LoRA has no per-domain
    weights, so a config that carries stage 1's num_domains resumes a stage-2 checkpoint of the same weights; the
    mutant records num_domains=7 and the resume is refused ("the checkpoint's adapter has num_domains=1")."""
    plain = Stage2Module(base=tiny_base, domains=TRAIN_DOMAINS, adapter=AdapterConfig("lora", 4))
    copied = Stage2Module(base=tiny_base, domains=TRAIN_DOMAINS, adapter=AdapterConfig("lora", 4, num_domains=7))
    assert copied.hparams["adapter"] == plain.hparams["adapter"] and copied.adapter_cfg.num_domains == 1
    copied.on_load_checkpoint({"hyper_parameters": dict(plain.hparams), "state_dict": {}})


def test_the_latent_cache_refusal_says_why():
    """Mutant __init__ 8 (the message's wording): stage 2 and ReCraft encode each chosen frame on its own."""
    with pytest.raises(ValueError, match=r"is for stage 1: stage 2 and ReCraft encode each chosen frame on its own"):
        Stage2Module(latent_cache_dir="somewhere")


def test_the_run_seed_changes_which_frames_a_step_draws(tiny_base, batch):  # noqa: F811
    """Mutant reference_samples 14 (`selection_generator(step, rank)`: the run's seed left out, so every seed of
    the ablations' seed spread trains on the same frame windows): same seed, same frames; another seed, others."""
    make = lambda seed: Stage2Module(base=tiny_base, domains=TRAIN_DOMAINS, cell=32, seed=seed)  # noqa: E731
    a, again, b = (make(s).reference_samples(batch, step=5)["frames"] for s in (0, 0, 1))  # 4 x (4, 3, 32, 32)
    assert all(torch.equal(x, y) for x, y in zip(a, again))
    assert any(not torch.equal(x, y) for x, y in zip(a, b))
