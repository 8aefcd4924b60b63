"""Optimizer checks on FSDP2's row-sharded DTensor parameters for tests/test_fsdp2.py (run by tests/fsdp2_worker.py
on 2 gloo ranks): CAME grouped and per tensor, the collectives each issues, and AdamW's kernels."""

from __future__ import annotations

import torch

# several tensors per shape; rows that split unevenly over 2 ranks (5, 3) and a row count that leaves rank 1 an
# empty shard (1); 1-D (unfactored) and 2-D (factored)
SHAPES = [(8, 5), (8, 5), (8, 5), (5, 8), (6,), (6,), (3,), (1, 9), (16, 4), (16, 4)]
STEPS, LR = 4, 1e-2
PER_TENSOR = [i for i, shape in enumerate(SHAPES) if shape[0] > 1]  # ShardedCAME fails on a 1-row tensor's step


def full_params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=g) for s in SHAPES]


def full_grads(step: int) -> list[torch.Tensor]:
    """Gradients of very different scales per tensor: the RMS clip acts on some, not others."""
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g) * 10.0 ** torch.randint(-3, 2, (), generator=g).item() for s in SHAPES]


def whole(t) -> torch.Tensor:
    """A (DTensor) state entry as one plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else torch.as_tensor(t)


def run(opt, params, steps: range, distribute, keep=range(len(SHAPES))) -> None:
    for step in steps:
        for p, grad in zip(params, [full_grads(step)[i] for i in keep]):
            p.grad = distribute(grad)
        opt.step()


def checks(mesh) -> dict:
    """On every rank of `mesh` (1-D, gloo): CAME's grouped and per-tensor steps on row-sharded DTensors, the
    collectives of one step, a per-tensor state resumed by the grouped step, AdamW foreach vs per tensor."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    from pm_lightning.training.optim import OptimizerConfig, ShardedCAME, build_optimizer

    def distribute(t: torch.Tensor) -> torch.Tensor:
        return distribute_tensor(t, mesh, [Shard(0)])

    def sharded(keep=range(len(SHAPES))) -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(distribute(full_params()[i])) for i in keep]

    result = {"types": {}, "collectives": {}}
    for impl, keep in (("grouped", range(len(SHAPES))), ("reference", PER_TENSOR)):
        params = sharded(keep)
        opt = build_optimizer(params, OptimizerConfig(name="came", lr=LR, implementation=impl))
        result["types"][impl] = type(opt).__name__
        run(opt, params, range(STEPS - 1), distribute, keep)
        for p, grad in zip(params, [full_grads(STEPS - 1)[i] for i in keep]):
            p.grad = distribute(grad)
        with CommDebugMode() as comm:  # a step with its state built: the collectives of every later step
            opt.step()
        result["collectives"][impl] = comm.get_total_counts()
        result[impl] = [p.full_tensor() for p in params]
        result[f"{impl} state"] = {k: whole(v) for k, v in opt.state[params[0]].items() if k != "step"}

    params = sharded(PER_TENSOR)  # 2 steps per tensor, then its state_dict loads into the grouped one for the rest
    half = ShardedCAME(params, lr=LR)
    run(half, params, range(2), distribute, PER_TENSOR)
    resumed = build_optimizer(params, OptimizerConfig(name="came", lr=LR))
    resumed.load_state_dict(half.state_dict())
    run(resumed, params, range(2, STEPS), distribute, PER_TENSOR)
    result["resumed"] = [p.full_tensor() for p in params]

    model = torch.nn.ParameterList(sharded())  # through torch.distributed.checkpoint, as the FSDP2 strategy saves
    first = build_optimizer(list(model), OptimizerConfig(name="came", lr=LR))
    run(first, list(model), range(2), distribute)
    options = StateDictOptions(full_state_dict=True)  # whole tensors on every rank, as each rank reads the file
    saved = get_optimizer_state_dict(model, first, options=options)
    again = torch.nn.ParameterList([torch.nn.Parameter(p.detach().clone()) for p in model])
    second = build_optimizer(list(again), OptimizerConfig(name="came", lr=LR))
    set_optimizer_state_dict(again, second, saved, options=options)
    run(second, list(again), range(2, STEPS), distribute)
    result["checkpointed"] = [p.full_tensor() for p in again]

    cube = [torch.nn.Parameter(distribute(torch.ones(2, 3, 4)))]  # 3-D: not taken by the grouped step
    result["types"]["3-D"] = type(build_optimizer(cube, OptimizerConfig(name="came"))).__name__

    for impl in ("grouped", "reference"):  # AdamW: torch's foreach kernels on DTensors vs its per-tensor loop
        params = sharded()
        opt = build_optimizer(params, OptimizerConfig(name="adamw", lr=LR, weight_decay=0.1, implementation=impl))
        result[f"adamw {impl} foreach"] = opt.param_groups[0]["foreach"]
        run(opt, params, range(STEPS), distribute)
        result[f"adamw {impl}"] = [p.full_tensor() for p in params]
    return result
