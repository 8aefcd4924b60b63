"""CAME stepping all tensors of one shape at once: came-pytorch's maths, batched over a stack of same-shape tensors.

came-pytorch's `CAME.step` loops over the parameters in Python (about 20 small kernels each; 1,102 LoRA tensors at
FLUX.1-dev scale). LoRA tensors come in few shapes (one A and one B shape per target width), so `GroupedCAME` stacks
the gradients of each (shape, dtype, device) group into one (k, ...) tensor and runs every CAME operation on the
stack: the factored row/column second moments are means over the last / second-to-last dimension, per tensor, so
they batch as they are; the per-tensor RMS clip is a norm over all but the stack dimension. The state lives in one
stacked buffer per group and key; each parameter's `state[p]` entries are views of it, so `state_dict()` has
came-pytorch's layout (a checkpoint loads into either implementation) and in-place updates of the stack are the
per-parameter state. A `load_state_dict` drops the stacks; the next step stacks the loaded state again.

The step of a stack is a generator that hands out, at three points, the sums a sharded tensor splits across ranks
(norms, column sums, the row moments' sums); here they are whole already. `ShardedGroupedCAME`
(training/came_sharded.py) runs the same maths on FSDP2's local shards and sums them with one all_reduce per point.
"""

from __future__ import annotations

import torch
from came_pytorch import CAME

FACTORED_KEYS = ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row", "exp_avg_res_col")
FULL_KEYS = ("exp_avg", "exp_avg_sq")


class _Stack:
    """One group's parameters (same shape, dtype, device) and their stacked state: buffers (k, ...) per key.

    `opt` says what a parameter's local tensor is and how a state entry views the stack (`GroupedCAME._local`,
    `_state_view`, `_loaded_local`): the parameter itself for plain tensors; the local shard for FSDP2's DTensors
    (training/came_sharded.py)."""

    def __init__(self, params: list[torch.nn.Parameter], state: dict, opt: GroupedCAME):
        self.params = params
        self.locals = [opt._local(p) for p in params]  # what the step updates in place
        self.factored = params[0].dim() >= 2
        self.rows, self.numel = (params[0].shape[-2] if self.factored else 1), params[0].numel()  # global
        shape = self.locals[0].shape
        like = torch.zeros((), dtype=state_dtype(params[0]), device=self.locals[0].device)
        empty = {  # state shapes of one tensor, as came-pytorch allocates them
            "exp_avg": shape,
            "exp_avg_sq": shape,
            "exp_avg_sq_row": shape[:-1],
            "exp_avg_sq_col": shape[:-2] + shape[-1:],
            "exp_avg_res_row": shape[:-1],
            "exp_avg_res_col": shape[:-2] + shape[-1:],
        }
        self.bufs = {}
        for key in (FACTORED_KEYS if self.factored else FULL_KEYS) + ("step", "RMS"):
            parts = [
                _state_value(opt._loaded_local(p, key, state[p].get(key)), empty.get(key, ()), like) for p in params
            ]
            self.bufs[key] = torch.stack(parts)  # (k, ...)
            for i, p in enumerate(params):
                state[p][key] = opt._state_view(p, key, self.bufs[key][i])  # in-place updates of the stack show

    def ids(self) -> tuple[int, ...]:
        return tuple(id(p) for p in self.params)


def state_dtype(p: torch.Tensor) -> torch.dtype:
    """CAME's state (and maths) dtype for parameter `p`: its gradient's dtype, half-precision gradients upcast."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _state_value(value, shape, like: torch.Tensor) -> torch.Tensor:
    """A loaded / earlier state entry as a tensor of `like`'s dtype and device; zeros when missing (a fresh state)."""
    if value is None:
        return like.new_zeros(shape)
    return torch.as_tensor(value).to(like.device, like.dtype).reshape(shape)


class GroupedCAME(CAME):
    """came-pytorch's CAME with the per-tensor loop replaced by batched maths over same-shape groups
    (module docstring); equal to `CAME.step` within float rounding (tests/test_came_grouped.py)."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self._stacks: dict[int, list[_Stack]] = {}  # param group index -> its stacks

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._stacks = {}  # the loaded state replaced the views: stack it again at the next step

    # what the sharded subclass (training/came_sharded.py) changes: local tensors, state views, the sums' reduction
    def _local(self, t: torch.Tensor) -> torch.Tensor:
        """The tensor the maths runs on: `t` itself here."""
        return t

    def _state_view(self, p: torch.Tensor, key: str, view: torch.Tensor) -> torch.Tensor:
        """What `state[p][key]` holds for the stack's slice `view`: the view itself here."""
        return view

    def _loaded_local(self, p: torch.Tensor, key: str, value):
        """A state entry as found (loaded or earlier, or None) -> its local part: itself here."""
        return value

    def _reduce(self, sums: list[tuple[torch.Tensor, ...]]) -> list[tuple[torch.Tensor, ...]]:
        """The sums every stack asks for at one phase of the step, summed over the ranks that share each tensor:
        nothing to sum over here (whole tensors)."""
        return sums

    def _group_stacks(self, index: int, params: list[torch.nn.Parameter]) -> list[_Stack]:
        """The stacks of a param group's parameters that have gradients; rebuilt when that set changes."""
        by_key: dict[tuple, list[torch.nn.Parameter]] = {}
        for p in params:
            by_key.setdefault((tuple(p.shape), p.dtype, p.device), []).append(p)
        stacks = self._stacks.get(index)
        if stacks is None or [s.ids() for s in stacks] != [tuple(map(id, ps)) for ps in by_key.values()]:
            stacks = [_Stack(ps, self.state, self) for ps in by_key.values()]
            self._stacks[index] = stacks
        return stacks

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        steps = []
        for index, group in enumerate(self.param_groups):
            with_grad = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in with_grad):
                raise RuntimeError("CAME does not support sparse gradients.")
            steps += [_step_stack(s, group, self._local) for s in self._group_stacks(index, with_grad)]
        asks = [next(s) for s in steps]  # every stack's step runs to its first reduction, then all reduce at once
        while asks:  # every stack asks at the same phases (3), so all finish together
            asks = [_advance(s, x) for s, x in zip(steps, self._reduce(asks))]
            asks = [] if asks[0] is None else asks
        return loss


def _advance(step, answer):
    """Send a stack's step its reduced sums; its next request, or None when it finished."""
    try:
        return step.send(answer)
    except StopIteration:
        return None


def _norms_sq(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[...] -> (k,): each tensor's sum of squares."""
    return torch.stack(torch._foreach_norm(tensors)) ** 2


def _approx_sq(row: torch.Tensor, row_sum: torch.Tensor, col: torch.Tensor, rows: int) -> torch.Tensor:
    """CAME._approx_sq_grad on stacks, the row mean given as a sum over `rows` rows:
    (k, ..., R), (k, ...), (k, ..., C) -> (k, ..., R, C)."""
    r_factor = (row / (row_sum / rows).unsqueeze(-1)).rsqrt_().unsqueeze(-1)  # (k, ..., R, 1)
    return r_factor * col.unsqueeze(-2).rsqrt()  # (k, ..., R, C)


def _step_stack(s: _Stack, group: dict, local):
    """One CAME step of every tensor in stack `s`, the operations of `CAME.step` in its order; a generator.

    It yields three times the sums over rows / whole tensors it needs (the parts a sharded tensor splits across
    ranks) and receives them summed (`GroupedCAME._reduce`): (1) the parameters' and, factored, the gradient
    squares' column sums and the new row moment's sum, (2) the update's squares (its RMS clip), (3) factored, the
    instability's column sums and its new row moment's sum. Means are these sums over the global sizes."""
    (beta1, beta2, beta3), (eps1, eps2), lr = group["betas"], group["eps"], group["lr"]
    b, params = s.bufs, s.locals
    grad = torch.stack([local(p.grad) for p in s.params]).to(state_dtype(s.params[0]))  # (k, ...)
    b["step"].add_(1)
    bcast = (-1,) + (1,) * (grad.dim() - 1)  # a (k,) per-tensor factor against (k, ...)
    update = grad**2 + eps1  # (k, ...)
    if s.factored:
        b["exp_avg_sq_row"].mul_(beta2).add_(update.mean(dim=-1), alpha=1.0 - beta2)  # (k, ..., R)
        p_sq, col, row = yield (_norms_sq(params), update.sum(dim=-2), b["exp_avg_sq_row"].sum(dim=-1))
        b["exp_avg_sq_col"].mul_(beta2).add_(col / s.rows, alpha=1.0 - beta2)  # (k, ..., C)
        update = _approx_sq(b["exp_avg_sq_row"], row, b["exp_avg_sq_col"], s.rows).mul_(grad)  # (k, ..., R, C)
    else:
        (p_sq,) = yield (_norms_sq(params),)
        b["exp_avg_sq"].mul_(beta2).add_(update, alpha=1.0 - beta2)
        update = b["exp_avg_sq"].rsqrt().mul_(grad)
    b["RMS"].copy_(p_sq.sqrt() / s.numel**0.5)  # (k,)
    (u_sq,) = yield (update.flatten(1).norm(2, dim=1) ** 2,)
    update.div_((u_sq.sqrt() / s.numel**0.5 / group["clip_threshold"]).clamp_(min=1.0).view(bcast))
    exp_avg = b["exp_avg"].mul_(beta1).add_(update, alpha=1 - beta1)
    res = (update - exp_avg) ** 2 + eps2  # instability (k, ...)
    if s.factored:
        b["exp_avg_res_row"].mul_(beta3).add_(res.mean(dim=-1), alpha=1.0 - beta3)
        col, row = yield (res.sum(dim=-2), b["exp_avg_res_row"].sum(dim=-1))
        b["exp_avg_res_col"].mul_(beta3).add_(col / s.rows, alpha=1.0 - beta3)
        update = _approx_sq(b["exp_avg_res_row"], row, b["exp_avg_res_col"], s.rows).mul_(exp_avg)
    else:
        yield ()  # every stack asks at the same three phases
        update = exp_avg.clone()
    if group["weight_decay"] != 0:
        torch._foreach_add_(params, params, alpha=-group["weight_decay"] * lr)
    torch._foreach_sub_(params, list(update.mul_(lr).unbind(0)))
