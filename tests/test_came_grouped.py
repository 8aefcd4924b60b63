"""GroupedCAME (training/came_grouped.py) against came-pytorch's CAME, and the optimizer implementations' choice.

The equality test was checked red twice: with `beta2` for `beta3` in the row instability moment of `_step_stack`
(relative difference 8e-5 against the 1e-5 tolerance), and with the RMS clip taken over the whole stack instead of
per tensor (17%)."""

import copy

import pytest
import torch
from came_pytorch import CAME

from pm_lightning.training.came_grouped import GroupedCAME
from pm_lightning.training.optim import OptimizerConfig, build_optimizer

# several tensors per shape (grouped), a lone shape, 1-D (unfactored), 2-D and 3-D (factored; asymmetric LoRA's B)
SHAPES = [(8, 5), (8, 5), (8, 5), (5, 8), (6,), (6,), (3,), (3, 7, 4), (3, 7, 4), (1, 9)]
RTOL, ATOL = 1e-5, 1e-7  # fp32: reductions over a stack may sum in another order than per tensor


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in SHAPES]


def set_grads(params, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:  # gradients of very different scales per tensor: the RMS clip acts on some, not others
        p.grad = torch.randn(p.shape, generator=g) * 10.0 ** torch.randint(-3, 2, (), generator=g).item()


def run(opt_cls, params, steps, start=0, opt=None, **kw):
    opt = opt or opt_cls(params, lr=1e-2, **kw)
    for step in range(start, start + steps):
        set_grads(params, step)
        opt.step()
    return opt


def assert_same(a, b):
    for p, q in zip(a, b):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_grouped_came_equals_came_pytorch_parameter_by_parameter(weight_decay):
    ref, grouped = make_params(), make_params()
    ref_opt = run(CAME, ref, 5, weight_decay=weight_decay)
    grouped_opt = run(GroupedCAME, grouped, 5, weight_decay=weight_decay)
    assert_same(ref, grouped)
    moved = max((p - q).abs().max().item() for p, q in zip(ref, make_params()))
    assert moved > 1e-3  # the steps did move the parameters
    for p, q in zip(ref, grouped):  # same state layout and values: checkpoints load into either implementation
        s, t = ref_opt.state[p], grouped_opt.state[q]
        assert set(s) == set(t)
        for key in s:
            torch.testing.assert_close(
                torch.as_tensor(t[key]).float(), torch.as_tensor(s[key]).float(), rtol=RTOL, atol=ATOL
            )


def test_grouped_came_resumes_from_either_state_dict():
    """2 steps, state_dict round trip (its own, and came-pytorch's), 3 more steps = 5 uninterrupted steps."""
    straight = make_params()
    run(GroupedCAME, straight, 5)
    for first_cls in (GroupedCAME, CAME):
        params = make_params()
        saved = copy.deepcopy(run(first_cls, params, 2).state_dict())
        resumed = GroupedCAME(params, lr=1e-2)
        resumed.load_state_dict(saved)
        run(GroupedCAME, params, 3, start=2, opt=resumed)
        assert_same(straight, params)


def test_grouped_came_skips_parameters_without_gradient():
    ref, grouped = make_params(), make_params()
    for params, cls in ((ref, CAME), (grouped, GroupedCAME)):
        opt = run(cls, params, 1)
        params[1].grad = params[6].grad = None  # e.g. a tensor the step's graph did not reach
        opt.step()
    assert_same(ref, grouped)


def test_build_optimizer_picks_the_implementation():
    p = [torch.nn.Parameter(torch.zeros(4, 4))]
    assert type(build_optimizer(p, OptimizerConfig())) is GroupedCAME
    assert type(build_optimizer(p, OptimizerConfig(implementation="reference"))) is not GroupedCAME
    adam = build_optimizer(p, OptimizerConfig(name="adamw")).param_groups[0]
    assert adam["foreach"] is True and not adam["fused"]  # CPU parameters: foreach; fused needs CUDA
    assert (
        build_optimizer(p, OptimizerConfig(name="adamw", implementation="reference")).param_groups[0]["foreach"]
        is False
    )
    with pytest.raises(ValueError, match="optimizer.implementation"):
        OptimizerConfig(implementation="fast")
