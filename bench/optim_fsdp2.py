"""Optimizer step / forward+backward under FSDP2 on 2 CPU (gloo) processes, per tensor vs grouped: the part of
bench/optim_step.py that spawns processes. Each rank builds the same stage-1 module (bench/step_setup.py), shards it
as the FSDP2 strategy does (`strategies.shard_flux`: one unit per Flux block, then the root), and per round runs one
forward+backward, then every optimizer's step on those gradients, each timed apart; the reported seconds are the
slower rank's."""

from __future__ import annotations

import os
import statistics
import time

import _paths  # noqa: F401 - bench/ is on sys.path as a script; this puts the repository there too
import torch
import torch.distributed as dist
from step_setup import StepSetup, build_module, make_batch, train_step

from pm_lightning.models.adapters import adapter_parameters  # noqa: E402
from pm_lightning.training.optim import OptimizerConfig, build_optimizer  # noqa: E402
from pm_lightning.training.strategies import shard_flux  # noqa: E402

WORLD = 2
OPTIMIZERS = [(name, impl) for name in ("came", "adamw") for impl in ("reference", "grouped")]


def _timed_synced(fn) -> float:
    dist.barrier()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _split(setup: StepSetup, steps: int, mesh) -> dict:
    module = build_module(setup, "cpu")
    shard_flux(module.transformer, mesh)
    batch = make_batch(setup, "cpu")
    params = adapter_parameters(module.transformer)  # DTensors now
    opts = {key: build_optimizer(params, OptimizerConfig(name=key[0], implementation=key[1])) for key in OPTIMIZERS}
    fwd_bwd, step = [], {key: [] for key in OPTIMIZERS}
    for i in range(steps + 1):  # the first round builds the optimizer states: not counted
        t = _timed_synced(lambda: train_step(module, None, batch, setup, "cpu"))  # forward + backward only
        times = {key: _timed_synced(opt.step) for key, opt in opts.items()}  # each on the same gradients
        module.zero_grad(set_to_none=True)
        if i:
            fwd_bwd.append(t)
            for key, s in times.items():
                step[key].append(s)
    medians = torch.tensor([statistics.median(fwd_bwd)] + [statistics.median(step[key]) for key in OPTIMIZERS])
    dist.all_reduce(medians, op=dist.ReduceOp.MAX)  # the slower rank's
    return {
        "tensors": len(params),
        "classes": {key[0] + " " + key[1]: type(opt).__name__ for key, opt in opts.items()},
        "fwd_bwd": medians[0].item(),
        "step": {key: medians[1 + i].item() for i, key in enumerate(OPTIMIZERS)},
    }


def _worker(rank: int, setups: dict, steps: int, threads: int, port: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    results = {label: _split(setup, steps, init_device_mesh("cpu", (WORLD,))) for label, setup in setups.items()}
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


def fsdp2_split(setups: dict, steps: int, threads: int, out: str, port: str = "29771") -> dict:
    """`optimizer_split`'s figures for every setup, under FSDP2 on 2 gloo processes (`threads` threads each)."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(setups, steps, threads, port, out), nprocs=WORLD)
    return torch.load(out)
