"""Multi-GPU strategies built from their config files (real FSDP/DeepSpeed runs need GPUs)."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from diffusers import FluxTransformer2DModel
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import Strategy

from pm_lightning.training.strategies import FluxFSDPStrategy, flux_block_classes
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


def test_fsdp_keeps_one_dtype_per_unit_without_a_hand_override():
    """FSDP flattens a unit into one dtype: the base dtype is derived as fp32 from the strategy (adapters are fp32),
    so neither the overlay nor the configs set it by hand."""
    import torch

    from pm_lightning.training.precision import base_dtype

    assert base_dtype("bf16-mixed", strategy_from("experiments/strategies/fsdp.yaml")) == torch.float32
    for config in [*REPO.glob("experiments/*.yaml"), *REPO.glob("experiments/*/*.yaml")]:
        model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
        assert "dtype" not in (model.get("init_args") or {}), config


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed (pip install '.[deepspeed]')"
)
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_build_their_zero_stage(stage):
    strategy = strategy_from(f"experiments/strategies/deepspeed_zero{stage}.yaml")
    assert strategy.config["zero_optimization"]["stage"] == stage
