"""CAME under FSDP2 on the local shards, grouped by shape (training/came_sharded.py), on 2 gloo processes: equal to
the per-tensor `ShardedCAME` and to came-pytorch on the whole tensors, with 3 collectives per step instead of about
5 per tensor; a per-tensor state loads into it; AdamW's foreach kernels on DTensors equal its per-tensor loop.

Checked red once: with `_reduce`'s all_reduce removed (each rank summing its own shard only), the first tensor,
(8, 5), differs from came-pytorch's beyond the tolerance. Slow tier: 60-66 s wall / 21 s CPU on the shared machine
under load (load average 11-15), over the ~20 s a slow test may take: most of it is the 3 interpreters' imports.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from came_pytorch import CAME

from tests.came_sharded_worker import LR, PER_TENSOR, SHAPES, STEPS, full_grads, full_params
from tests.conftest import REPO

RTOL, ATOL = 1e-5, 1e-6  # fp32: sums over shards and stacks add in another order than per whole tensor


def came_pytorch() -> list[torch.Tensor]:
    """STEPS steps of came-pytorch on the whole tensors in one process."""
    params = [torch.nn.Parameter(t) for t in full_params()]
    opt = CAME(params, lr=LR)
    for step in range(STEPS):
        for p, grad in zip(params, full_grads(step)):
            p.grad = grad
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.slow
def test_grouped_came_on_shards_equals_per_tensor_and_single_process_came(tmp_path):
    out = tmp_path / "sharded.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.came_sharded_worker", "29741", str(out)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = torch.load(out)
    assert r["types"] == {"grouped": "ShardedGroupedCAME", "reference": "ShardedCAME", "3-D": "ShardedCAME"}
    whole, start = came_pytorch(), full_params()
    assert len(r["grouped"]) == len(SHAPES)
    for i, (mine, theirs) in enumerate(zip(r["grouped"], whole)):
        torch.testing.assert_close(mine, theirs, rtol=RTOL, atol=ATOL, msg=f"{SHAPES[i]}")
        assert (mine - start[i]).abs().max() > 1e-3  # every tensor moved (rank 1's empty shard of (1, 9) too)
    for name in ("reference", "resumed"):  # per tensor throughout; per tensor for 2 steps, then grouped
        for i, theirs in zip(PER_TENSOR, r[name]):
            torch.testing.assert_close(r["grouped"][i], theirs, rtol=RTOL, atol=ATOL, msg=f"{name} {SHAPES[i]}")
    for key, value in r["grouped state"].items():  # the same state: checkpoints hold either implementation's
        torch.testing.assert_close(value, r["reference state"][key], rtol=RTOL, atol=ATOL, msg=key)
    assert r["collectives"]["grouped"] == 3  # one all_reduce per point of the step, whatever the tensor count
    assert r["collectives"]["reference"] >= 4 * len(PER_TENSOR)
    assert r["adamw grouped foreach"] is True and r["adamw reference foreach"] is False
    for mine, theirs in zip(r["adamw grouped"], r["adamw reference"]):
        torch.testing.assert_close(mine, theirs, rtol=RTOL, atol=ATOL)
