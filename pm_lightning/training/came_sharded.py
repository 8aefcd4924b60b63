"""CAME on FSDP2's local shards, grouped by shape, with the cross-rank sums batched: `ShardedGroupedCAME`.

Under FSDP2 every parameter is a DTensor sharded on dim 0 (rows) over the mesh's shard dimension (HSDP: the second
one; the first replicates). came-pytorch's step on DTensors (`optim.ShardedCAME`) dispatches about 30 DTensor ops
and 5 cross-rank reductions per tensor. Here the step is `GroupedCAME`'s (training/came_grouped.py) on the local
shards: same-global-shape parameters have the same local shape on a rank, so they stack as in the single-process
case; every quantity CAME reduces over the sharded rows is a sum the step asks for at one of three points (the
parameters' norms, the column sums of the squared gradient and of the instability, the row moments' sums, the
update's norm for its RMS clip), and each point's sums of every tensor travel in one all_reduce of a flat buffer:
3 collectives per step, whatever the number of tensors. Means divide those sums by the global sizes, so the maths
is the unsharded step's (tests/test_fsdp2.py: 2 gloo ranks against `ShardedCAME` and came-pytorch).

The state stays DTensors, as `ShardedCAME` builds it (moments and row statistics sharded like the parameter, column
statistics replicated), each a view of the stacked local buffer: `torch.distributed.checkpoint` gathers and
redistributes it, and a state from either implementation loads into the other.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard

from pm_lightning.training.came_grouped import GroupedCAME

PARAM_LIKE = ("exp_avg", "exp_avg_sq", "exp_avg_sq_row", "exp_avg_res_row")  # sharded like the parameter's rows


def shard_mesh_dim(p: torch.Tensor) -> int | None:
    """The mesh dimension sharding `p`'s rows when `p` is a 1-D or 2-D DTensor sharded on dim 0 by one mesh
    dimension and replicated over the others (FSDP2, HSDP); None for anything else."""
    if not isinstance(p, DTensor) or p.dim() > 2:
        return None
    shards = [i for i, pl in enumerate(p.placements) if pl == Shard(0)]
    others = [pl for i, pl in enumerate(p.placements) if i not in shards]
    return shards[0] if len(shards) == 1 and all(isinstance(pl, Replicate) for pl in others) else None


def can_group(params: list[torch.Tensor]) -> bool:
    """True when `ShardedGroupedCAME` takes `params`: all sharded as `shard_mesh_dim` accepts, by one process group."""
    keys = {(p.device_mesh, shard_mesh_dim(p)) if isinstance(p, DTensor) else None for p in params}
    return len(keys) == 1 and None not in keys and next(iter(keys))[1] is not None


class ShardedGroupedCAME(GroupedCAME):
    """`GroupedCAME` on FSDP2's local shards, its sums all-reduced once per point of the step (module docstring)."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        params = [p for g in self.param_groups for p in g["params"]]
        if not can_group(params):
            raise ValueError("ShardedGroupedCAME takes 1-D / 2-D DTensors sharded on dim 0 over one mesh dimension")
        self._mesh = params[0].device_mesh
        self._group = self._mesh.get_group(shard_mesh_dim(params[0]))

    def _local(self, t: torch.Tensor) -> torch.Tensor:
        return t.to_local()  # under no_grad: the shard itself, updated in place

    def _placements(self, p: DTensor, key: str) -> tuple:
        return tuple(p.placements) if key in PARAM_LIKE else (Replicate(),) * self._mesh.ndim

    def _state_view(self, p: DTensor, key: str, view: torch.Tensor) -> torch.Tensor:
        if key in ("step", "RMS"):
            return view  # the same on every rank: a plain tensor
        shape = p.shape[:-1] if key.endswith("_row") else p.shape[-1:] if key.endswith("_col") else p.shape  # global
        stride = torch.empty(shape, device="meta").stride()
        return DTensor.from_local(
            view, self._mesh, self._placements(p, key), run_check=False, shape=shape, stride=stride
        )

    def _loaded_local(self, p: DTensor, key: str, value):
        if not isinstance(value, DTensor):
            return value
        if key in ("step", "RMS"):
            return value.full_tensor()
        want = self._placements(p, key)
        return (value if tuple(value.placements) == want else value.redistribute(self._mesh, want)).to_local()

    def _reduce(self, sums: list[tuple[torch.Tensor, ...]]) -> list[tuple[torch.Tensor, ...]]:
        """Every stack's sums at one point, summed over the shard group in one all_reduce of a flat buffer."""
        parts = [t for ask in sums for t in ask]
        if not parts:
            return sums
        flat = torch.cat([t.reshape(-1) for t in parts])  # (total,) in the widest dtype of the parts
        dist.all_reduce(flat, group=self._group)
        pieces = iter(flat.split([t.numel() for t in parts]))
        return [tuple(next(pieces).view(t.shape).to(t.dtype) for t in ask) for ask in sums]
