"""Multi-GPU strategies built from their config files (the 2-process FSDP2 runs are in tests/test_fsdp2.py)."""

from __future__ import annotations

import pytest
import yaml
from diffusers import FluxTransformer2DModel
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import Strategy

from pm_lightning.training.strategies import FluxFSDP2Strategy, flux_block_classes
from tests.conftest import REPO
from tests.helpers import tiny_transformer


def strategy_from(config: str) -> Strategy:
    """Instantiate `trainer.strategy` of a config file the way LightningCLI does."""
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    spec = yaml.safe_load((REPO / config).read_text())["trainer"]["strategy"]
    return parser.instantiate_classes(parser.parse_object({"strategy": spec})).strategy


def test_fsdp_config_is_fsdp2_sharding_exactly_the_flux_blocks_diffusers_will_not_split():
    import torch
    from lightning.pytorch.strategies import ModelParallelStrategy

    from pm_lightning.training.precision import base_dtype

    strategy = strategy_from("experiments/strategies/fsdp.yaml")
    assert isinstance(strategy, FluxFSDP2Strategy) and isinstance(strategy, ModelParallelStrategy)
    assert strategy.reshard_after_forward and not strategy._save_distributed_checkpoint
    assert {c.__name__ for c in flux_block_classes()} == set(FluxTransformer2DModel._no_split_modules)
    assert base_dtype("bf16-mixed", strategy) == torch.bfloat16  # no fp32 base under FSDP2


def test_shard_flux_makes_one_unit_per_block_then_the_root():
    """One gloo process (world size 1): every block and the transformer become FSDP2 modules, parameters DTensors."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    from pm_lightning.training.strategies import is_sharded, shard_flux

    model = tiny_transformer()
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29733", rank=0, world_size=1)
    try:
        units = shard_flux(model, init_device_mesh("cpu", (1,)))
        assert units == len(model.transformer_blocks) + len(model.single_transformer_blocks)
        blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
        assert isinstance(model, FSDPModule) and all(isinstance(b, FSDPModule) for b in blocks)
        assert not isinstance(model.x_embedder, FSDPModule)  # the root unit holds the embedders
        assert is_sharded(model)
    finally:
        dist.destroy_process_group()


def test_no_shipped_config_keeps_a_hand_set_base_dtype():
    for config in [*REPO.glob("experiments/*.yaml"), *REPO.glob("experiments/*/*.yaml")]:
        model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
        assert "dtype" not in (model.get("init_args") or {}), config


def test_no_shipped_config_uses_deepspeed():
    """DeepSpeed is gone (docs/SCALING.md, "No DeepSpeed"): no config names it, and fit refuses it at load
    (`tests/test_bad_inputs.py`)."""
    for config in REPO.glob("experiments/**/*.yaml"):
        assert "deepspeed" not in config.read_text().lower(), config


def test_refuse_deepspeed_names_every_spelling_and_the_fix():
    """Checked red: without the `refuse_deepspeed` call in `ProcessCLI.before_instantiate_classes`, fit's two
    `trainer.strategy` cases in tests/test_bad_inputs.py end with Lightning's "invalid strategy name" line instead
    (naming neither the key nor a fix)."""
    from jsonargparse import Namespace

    from pm_lightning.training.strategies import refuse_deepspeed

    for fine in ("auto", "ddp", None, {"class_path": "pm_lightning.training.strategies.FluxFSDP2Strategy"}):
        refuse_deepspeed(fine)
    path = "lightning.pytorch.strategies.DeepSpeedStrategy"
    for spelling in ("deepspeed", "deepspeed_stage_2_offload", {"class_path": path}, Namespace(class_path=path)):
        with pytest.raises(ValueError, match=r"trainer.strategy .*DeepSpeed is not supported.*fsdp.yaml"):
            refuse_deepspeed(spelling)


def test_hsdp_mesh_is_replicate_by_shard_over_consecutive_ranks_and_refuses_an_uneven_split():
    """hsdp.yaml builds FluxHSDPStrategy; its mesh over 4 ranks with shard_size 2 is 2 replicas x 2 shards, each shard
    group consecutive ranks (one node's GPUs), and `fully_shard` on it places every parameter (Replicate(), Shard(0)).
    Built on torch's fake process group (4 ranks in one process, no communication). The 4-process run is
    tests/test_hsdp.py's."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import Replicate, Shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from pm_lightning.training.strategies import FluxHSDPStrategy, hsdp_mesh, hsdp_shape, shard_flux

    strategy = strategy_from("experiments/strategies/hsdp.yaml")
    assert isinstance(strategy, FluxHSDPStrategy) and strategy.shard_size is None and strategy.reshard_after_forward
    strategy.parallel_devices, strategy.num_nodes = [torch.device("cpu")] * 4, 3
    assert strategy.mesh_shape() == (3, 4)  # default: a shard group per node, a replica per node
    strategy.shard_size = 2
    assert strategy.mesh_shape() == (6, 2)

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
    try:
        mesh = hsdp_mesh(4, 2, "cpu")
        assert mesh.shape == (2, 2) and mesh.mesh_dim_names == ("replicate", "shard")
        assert mesh.mesh.tolist() == [[0, 1], [2, 3]]
        model = tiny_transformer()
        assert shard_flux(model, mesh) == len(model.transformer_blocks) + len(model.single_transformer_blocks)
        assert {tuple(p.placements) for p in model.parameters()} == {(Replicate(), Shard(0))}
    finally:
        dist.destroy_process_group()

    for world, shard in ((6, 4), (4, 0), (4, 3)):
        with pytest.raises(
            ValueError, match=rf"world size {world} .*not divisible.*--trainer.strategy.init_args.shard_size"
        ):
            hsdp_shape(world, shard)
    strategy.parallel_devices, strategy.num_nodes, strategy.shard_size = [torch.device("cpu")] * 3, 2, 4
    with pytest.raises(ValueError, match="world size 6 .*shard group size 4.*divisor of 6"):
        strategy.mesh_shape()
