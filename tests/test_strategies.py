"""Multi-GPU strategies built from their config files (real FSDP/DeepSpeed runs need GPUs)."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from diffusers import FluxTransformer2DModel
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import Strategy

from pm_lightning.strategies import FluxFSDPStrategy, flux_block_classes
from tests.conftest import REPO
from tests.helpers import tiny_transformer


def strategy_from(config: str) -> Strategy:
    """Instantiate `trainer.strategy` of a config file the way LightningCLI does."""
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    spec = yaml.safe_load((REPO / config).read_text())["trainer"]["strategy"]
    return parser.instantiate_classes(parser.parse_object({"strategy": spec})).strategy


def test_fsdp_wraps_exactly_the_flux_blocks_diffusers_will_not_split():
    strategy = strategy_from("experiments/strategies/fsdp.yaml")
    assert isinstance(strategy, FluxFSDPStrategy)
    blocks = flux_block_classes()
    assert {c.__name__ for c in blocks} == set(FluxTransformer2DModel._no_split_modules)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert set(policy._module_classes) == blocks
    assert set(strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes) == blocks
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy.kwargs["use_orig_params"]
    model = tiny_transformer()
    wrapped = [m for m in model.modules() if type(m) in blocks]
    assert len(wrapped) == len(model.transformer_blocks) + len(model.single_transformer_blocks)


def test_fsdp_overlay_keeps_one_dtype_per_unit():
    """FSDP flattens a unit into one dtype: the overlay pins the frozen base to fp32 (adapters are fp32)."""
    overlay = yaml.safe_load((REPO / "experiments/strategies/fsdp.yaml").read_text())
    assert overlay["model"]["init_args"]["dtype"] == "float32"


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed (pip install '.[deepspeed]')")
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_build_their_zero_stage(stage):
    strategy = strategy_from(f"experiments/strategies/deepspeed_zero{stage}.yaml")
    assert strategy.config["zero_optimization"]["stage"] == stage
