"""Multi-GPU strategies for Flux: FSDP2 (`fully_shard` per Flux block, then the root) through Lightning's
ModelParallelStrategy, flat over every rank or hybrid (HSDP: sharded within a node, replicated across nodes); DDP is
Lightning's own except at teardown (`FluxDDPStrategy`: the frozen base stays where it is). DeepSpeed is refused at load
(`refuse_deepspeed`; docs/SCALING.md).

Sharding rules are data: FLUX_BLOCKS is diffusers' `FluxTransformer2DModel._no_split_modules`. FSDP2 shards each
parameter on its own (a DTensor per parameter, no flat buffer), so one unit may hold the frozen bf16 base and the
trainable fp32 adapters; frozen parameters get no gradient and no reduce-scatter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor


def refuse_deepspeed(strategy) -> None:
    """Refuse a DeepSpeed `trainer.strategy` (a name such as "deepspeed_stage_2" or a class_path) before any work.

    Not supported, on purpose: with fp32 adapters ZeRO-2 does not check gradients for inf/nan and keeps them in its
    own flat partitions, CAME would get flat 1-D partitions (silently not factored), and Lightning's DeepSpeed
    checkpoints hold no `state_dict` (docs/SCALING.md, "No DeepSpeed"). FSDP2 covers what ZeRO-2 would give.
    """
    name = strategy.get("class_path", "") if isinstance(strategy, dict) else getattr(strategy, "class_path", strategy)
    if "deepspeed" in str(name or "").lower():
        raise ValueError(
            f'trainer.strategy {name!r}: DeepSpeed is not supported (docs/SCALING.md, "No DeepSpeed"); use '
            "--config experiments/strategies/fsdp.yaml (FSDP2; --trainer.strategy.init_args.reshard_after_forward "
            "false shards like ZeRO-2) or experiments/strategies/ddp.yaml"
        )


def flux_block_classes() -> set[type]:
    """The classes sharded as one unit each: one per double- or single-stream block."""
    # lazy: diffusers' Flux blocks, 16 s more for fit --help (docs/ARCHITECTURE.md, "Start-up")
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    return {FluxTransformerBlock, FluxSingleTransformerBlock}


def shard_flux(transformer: nn.Module, mesh, reshard_after_forward: bool = True) -> int:
    """`fully_shard` every Flux block, then the transformer (the root unit: embedders, norm_out, proj_out).

    Returns the number of block units. Parameters keep their dtypes (no MixedPrecisionPolicy casts): the base
    as loaded, the adapters in fp32; gradients are reduced in their own dtype (fp32: only adapters have them).
    """
    blocks = tuple(flux_block_classes())
    units = [m for m in transformer.modules() if isinstance(m, blocks)]
    for block in units:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(transformer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return len(units)


def is_sharded(module: nn.Module) -> bool:
    """True when any parameter of `module` is a DTensor (FSDP2)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """A (possibly DTensor) norm as a plain tensor: the global value across shards (a collective for a DTensor)."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def gathered_trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of a (possibly FSDP2-sharded) module, whole and on CPU, on rank 0 (empty elsewhere).

    A collective: every rank must call it. Frozen weights are never gathered.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(module, options=options)


@contextmanager
def frozen_state_held(module: nn.Module | None) -> Iterator[int]:
    """Within: `module`'s frozen parameters (requires_grad False) and the buffers of its submodules that own no
    trainable parameter are out of its `_apply` (`.cpu()`, `.to()`, `.half()`): they stay where they are, the same
    tensors. On exit every one is back in its place, in its order. Yields how many were held.

    Done by setting their entries of `_parameters` / `_buffers` to None, which `nn.Module._apply` skips; nothing else
    may read the module's parameters inside. An adapter's own buffers (none today) would move with its weights.
    """
    held: list[tuple[dict, str, torch.Tensor]] = []
    for sub in module.modules() if module is not None else ():
        params = [(key, p) for key, p in sub._parameters.items() if p is not None]
        held += [(sub._parameters, key, p) for key, p in params if not p.requires_grad]
        if not any(p.requires_grad for _, p in params):
            held += [(sub._buffers, key, b) for key, b in sub._buffers.items() if b is not None]
    for store, key, _ in held:
        store[key] = None
    try:
        yield len(held)
    finally:
        for store, key, tensor in held:
            store[key] = tensor


class FluxDDPStrategy(DDPStrategy):
    """Lightning's DDPStrategy, except that its teardown leaves the frozen base where it is.

    Lightning's `Strategy.teardown` moves the whole model to CPU memory (`lightning_module.cpu()`): at FLUX.1-dev size
    every rank's base, about 24 GB in bf16 (190 GB per 8-GPU node), copied to host memory after the last step, and
    after the step-0 validation of `--validate_first` (its own teardown) and back to the GPU for the fit. Here the
    frozen parameters and buffers are held out of that move (`frozen_state_held`); the rest of Lightning's teardown
    runs as it is (the adapters and the optimizer state go to CPU memory, DDP is unwrapped).
    """

    def teardown(self) -> None:
        with frozen_state_held(self.lightning_module):
            super().teardown()


class FluxFSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over every rank (pure data parallel, no tensor parallel): one unit per Flux block, the transformer
    as the root unit; text encoders and VAE stay replicated (frozen; with a text cache the encoders are not loaded).

    The module's `configure_model` builds the backbone and adapters as usual; `setup` shards the transformer before
    Lightning builds the optimizer, so the optimizer holds the DTensor adapter shards. Checkpoints hold the trainable
    weights only: `lightning_module_state_dict` gathers them with `ignore_frozen_params` (the 12B base is never
    gathered) into one file on rank 0 (`save_distributed_checkpoint: false`, the default here).
    """

    def __init__(
        self,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        **kwargs,
    ):
        """
        Args:
            reshard_after_forward: free each block's gathered parameters after its forward (ZeRO-3-like, least
                memory); false keeps them gathered until backward (ZeRO-2-like, one all-gather per step less).
            save_distributed_checkpoint: one shard file per rank (a folder) instead of one adapter-only file.
            **kwargs: ModelParallelStrategy's process_group_backend, timeout.
        """
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.reshard_after_forward = reshard_after_forward
        self.num_units = 0

    def setup_environment(self) -> None:
        # data parallel over every process of every node; ModelParallelStrategy's "auto" means tensor parallel
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def setup(self, trainer) -> None:
        module = self.lightning_module
        if not is_sharded(module.transformer):
            self.num_units = shard_flux(module.transformer, self.shard_mesh(), self.reshard_after_forward)
        super().setup(trainer)

    def shard_mesh(self):
        """The mesh `fully_shard` gets: 1-D over every rank (flat FSDP2)."""
        return self.device_mesh["data_parallel"]

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The trainable weights, gathered whole on rank 0 (on CPU); the frozen base is left out on every rank."""
        full = not self._save_distributed_checkpoint
        options = StateDictOptions(full_state_dict=full, cpu_offload=full, ignore_frozen_params=True)
        return get_model_state_dict(self.model, options=options)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's load (each rank takes its shards of the adapters and optimizer state); the adapter-only
        `state_dict` is handed on too, so the module's `on_load_checkpoint` can refuse a checkpoint lacking them."""
        path = Path(self.broadcast(checkpoint_path))
        checkpoint = super().load_checkpoint(path, weights_only=weights_only)
        if path.is_file():  # a single file (not a distributed-checkpoint folder): small, adapters only
            checkpoint["state_dict"] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["state_dict"]
        return checkpoint


def hsdp_shape(world_size: int, shard_size: int) -> tuple[int, int]:
    """(replicas, shard group size) of an HSDP mesh over `world_size` ranks; a clear error when it does not divide."""
    if shard_size < 1 or world_size % shard_size:
        raise ValueError(
            f"HSDP (experiments/strategies/hsdp.yaml): world size {world_size} (trainer.devices x trainer.num_nodes) "
            f"is not divisible by the shard group size {shard_size}; set --trainer.strategy.init_args.shard_size to "
            f"a divisor of {world_size} (leave it unset for the GPUs per node, trainer.devices)"
        )
    return world_size // shard_size, shard_size


def refuse_uneven_hsdp(trainer) -> None:
    """At load: an HSDP `trainer.strategy` whose shard group does not divide devices x num_nodes. `trainer` is the
    parsed trainer config; devices "auto" / -1 are checked when the processes start (`setup_environment`)."""
    strategy = trainer.strategy.as_dict() if hasattr(trainer.strategy, "as_dict") else trainer.strategy
    if not isinstance(strategy, dict) or not str(strategy.get("class_path")).endswith("FluxHSDPStrategy"):
        return
    devices = trainer.devices
    devices = len(devices) if isinstance(devices, list) else int(devices) if str(devices).isdigit() else 0
    if devices:
        shard_size = (strategy.get("init_args") or {}).get("shard_size")
        hsdp_shape(devices * int(trainer.num_nodes or 1), shard_size or devices)


def hsdp_mesh(world_size: int, shard_size: int, device_type: str):
    """The 2-D mesh ("replicate", "shard"): consecutive ranks (one node's GPUs under torchrun / SLURM) form a shard
    group, and the i-th rank of every group forms a replica group. `fully_shard(mesh=...)` on it is HSDP."""
    from torch.distributed.device_mesh import init_device_mesh

    shape = hsdp_shape(world_size, shard_size)
    return init_device_mesh(device_type, shape, mesh_dim_names=("replicate", "shard"))


class FluxHSDPStrategy(FluxFSDP2Strategy):
    """FSDP2 with a replicate dimension (HSDP): the base, adapters, gradients and optimizer state are sharded over a
    shard group (default: the GPUs of one node) and replicated across groups. Per step the parameter all-gathers and
    gradient reduce-scatters stay inside a group (NVLink); only the adapters' gradient shards are all-reduced across
    groups (the inter-node network), never the frozen base.

    Everything else is FluxFSDP2Strategy's (units, checkpoints, resume). Lightning's own mesh stays 1-D data parallel
    over every rank (each rank reads its own data); the 2-D mesh is only for `fully_shard`.
    """

    def __init__(self, shard_size: int | None = None, **kwargs):
        """
        Args:
            shard_size: ranks per shard group; None = trainer.devices (the GPUs of one node), so replicas =
                trainer.num_nodes. Must divide the world size (devices x num_nodes).
            **kwargs: FluxFSDP2Strategy's (reshard_after_forward, save_distributed_checkpoint, ...).
        """
        super().__init__(**kwargs)
        self.shard_size = shard_size
        self._hsdp_mesh = None

    def mesh_shape(self) -> tuple[int, int]:
        """(replicas, shard group size) for this launch: devices x num_nodes ranks, `shard_size` (or devices) each."""
        return hsdp_shape(self.num_nodes * self.num_processes, self.shard_size or self.num_processes)

    def setup_environment(self) -> None:
        shard = self.mesh_shape()[1]  # refused here, before the process group starts
        super().setup_environment()
        self._hsdp_mesh = hsdp_mesh(self.world_size, shard, self.root_device.type)

    def shard_mesh(self):
        """The 2-D ("replicate", "shard") mesh."""
        return self._hsdp_mesh
