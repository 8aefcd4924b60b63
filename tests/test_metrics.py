"""Per-domain validation loss: sums and counts per domain, exact over any split across ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pm_lightning.training.metrics import PerDomainMean

VALUES = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
NAMES = ["lego", "cake", "lego", "origami", "mosaic", "lego"]


def test_per_domain_means_and_unseen_bucket():
    metric = PerDomainMean(["lego", "cake", "origami"])
    metric.update(VALUES[:3], NAMES[:3])
    metric.update(VALUES[3:], NAMES[3:])
    out = {k: v.item() for k, v in metric.compute().items()}
    assert out == pytest.approx({"lego": (1 + 3 + 6) / 3, "cake": 2.0, "origami": 4.0, "unseen": 5.0})  # mosaic: unseen
    metric.reset()
    assert metric.compute() == {}


def _rank(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    metric = PerDomainMean(["lego", "cake", "origami"])
    part = [0, 1] if rank == 0 else [2, 3, 4, 5]  # unequal splits: a mean of rank means would be wrong
    metric.update(VALUES[part], [NAMES[i] for i in part])
    out[rank] = {k: v.item() for k, v in metric.compute().items()}
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_result():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(port, out), nprocs=2, join=True)
    single = PerDomainMean(["lego", "cake", "origami"])
    single.update(VALUES, NAMES)
    expected = {k: v.item() for k, v in single.compute().items()}
    assert out[0] == out[1] == pytest.approx(expected)
