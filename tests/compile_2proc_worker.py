"""A 2-process gloo worker for tests/test_compile_blocks_2proc.py: the stage-1 step with compiled blocks and eager,
under DDP (the module's loss through `DistributedDataParallel`, as Lightning's DDP strategy calls it) and under FSDP2
(`strategies.shard_flux`, as the FSDP2 strategy shards after `configure_model` compiled the blocks). Each rank takes
its own batch; rank 0 saves both modes' losses and synchronised gradients (DDP: all-reduced; FSDP2: the gathered
reduce-scattered shards)."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn


class Loss(nn.Module):
    """The stage-1 loss as a module's forward, so DDP's forward / backward hooks run around it."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, batch: dict, key: int) -> torch.Tensor:
        terms = self.m.losses(batch, key)
        return terms["fm"].mean() + (terms["lambda"] * terms["align"]).mean()


def batch(rank: int, key: int) -> dict:
    g = torch.Generator().manual_seed(10 * rank + key)
    return {
        "pixels": torch.rand(1, 3, 64, 64, generator=g) * 2 - 1,  # (1, 3, 64, 64)
        "caption": [["a lego tower", "an oil painting of a tree"][rank]],
        "domain": torch.tensor([[0, 1], [2, -1]][key][rank : rank + 1]),  # step 2 routes to other domains
    }


def grads(m) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in m.named_parameters():
        if p.grad is not None:
            g = p.grad
            out[name] = g.full_tensor() if hasattr(g, "full_tensor") else g.clone()
    return out


def run(strategy: str, compile: bool, tiny_base: str, rank: int, mesh) -> list[tuple[torch.Tensor, dict]]:
    from torch.nn.parallel import DistributedDataParallel

    from pm_lightning.training.strategies import shard_flux
    from tests.test_compile_blocks import module

    m = module(tiny_base, compile)  # the same seed on both ranks: the same weights
    if strategy == "fsdp2":
        shard_flux(m.transformer, mesh)
        loss_fn = Loss(m)
    else:
        loss_fn = DistributedDataParallel(Loss(m), find_unused_parameters=False)  # experiments/strategies/ddp.yaml
    steps = []
    for key in range(2):
        m.zero_grad(set_to_none=True)
        loss = loss_fn(batch(rank, key), key)
        loss.backward()
        steps.append((loss.detach(), grads(m)))
    return steps


def main(rank: int, world: int, port: str, tiny_base: str, out: str) -> None:
    import torch._dynamo.utils
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from pm_lightning.models import compile_blocks as cb

    cb.COMPILE_OPTIONS = {"backend": "eager"}  # as tests/test_compile_blocks.py (its docstring says why)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    result = {}
    for strategy in ("ddp", "fsdp2"):
        for compile in (False, True):
            before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            result[strategy, compile] = run(strategy, compile, tiny_base, rank, mesh)
            result[strategy, compile, "graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
    if rank == 0:
        torch.save(result, out)
    del result
    import gc

    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    mp.spawn(main, args=(2, sys.argv[1], sys.argv[2], sys.argv[3]), nprocs=2)
