"""A 2-process gloo worker for tests/test_fsdp2.py: clipped CAME steps on a fully_shard'ed toy model, and the
optimizer checks of tests/fsdp2_optim_checks.py."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn


def toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3), nn.Linear(3, 2))


def step(model: nn.Module, optimizer, x: torch.Tensor, clip: float) -> None:
    """forward, backward, Lightning's clipping by norm, one optimizer step."""
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.utilities import GradClipAlgorithmType

    model(x).pow(2).sum().backward()
    Precision().clip_gradients(optimizer, clip, GradClipAlgorithmType.NORM)
    optimizer.step()


def main(rank: int, world: int, port: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from pm_lightning.training.optim import OptimizerConfig, build_optimizer
    from tests.fsdp2_optim_checks import checks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    result = {}
    for name in ("came", "sgd"):  # CAME is invariant to the gradient's scale; SGD shows the clipping
        model = toy()
        model[0].bias.requires_grad_(False)  # a frozen parameter inside a unit
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if name == "came":
            optimizer = build_optimizer(trainable, OptimizerConfig(name="came", lr=1e-2))
        else:
            optimizer = torch.optim.SGD(trainable, lr=1.0)
        for _ in range(2):
            step(model, optimizer, x, clip=0.01)
            optimizer.zero_grad()
        result[name] = {k: v.full_tensor() for k, v in model.state_dict().items()}
    result["optimizers"] = checks(mesh)
    if rank == 0:
        torch.save(result, out)
    del model, optimizer, result  # no tensor of a gloo work may outlive the group (an abort at exit otherwise)
    import gc

    gc.collect()
    dist.barrier()  # both ranks done with every collective before gloo's threads are torn down (an abort otherwise)
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    mp.spawn(main, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
