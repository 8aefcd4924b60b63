"""Optimizer factory and learning-rate schedules."""

import pytest
import torch

from pm_lightning.training.optim import OptimizerConfig, build_optimizer, build_scheduler, lr_factor


def test_came_is_default_with_paper_hyperparameters():
    from came_pytorch import CAME

    p = torch.nn.Parameter(torch.zeros(4, 4))
    opt = build_optimizer([p], OptimizerConfig())
    assert isinstance(opt, CAME)
    group = opt.param_groups[0]
    assert (
        group["lr"] == 1e-4 and tuple(group["betas"]) == (0.9, 0.999, 0.9999) and tuple(group["eps"]) == (1e-30, 1e-16)
    )


def test_came_and_adamw_both_reduce_a_quadratic():
    for name in ("came", "adamw"):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(8, 8))
        opt = build_optimizer([p], OptimizerConfig(name=name, lr=1e-2))
        start = (p**2).sum().item()
        for _ in range(50):
            opt.zero_grad()
            (p**2).sum().backward()
            opt.step()
        assert (p**2).sum().item() < 0.8 * start, name


def test_schedules():
    warm = OptimizerConfig(schedule="warmup_constant", warmup_steps=4)
    assert [lr_factor(s, warm) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = OptimizerConfig(schedule="warmup_cosine", warmup_steps=2, total_steps=12)
    assert lr_factor(2, cos) == pytest.approx(1.0)
    assert lr_factor(7, cos) == pytest.approx(0.5)
    assert lr_factor(12, cos) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(100, OptimizerConfig()) == 1.0
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = OptimizerConfig(name="adamw", lr=1.0, schedule="warmup_constant", warmup_steps=2)
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    opt.step(), sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)


def test_validation_names_the_field():
    with pytest.raises(ValueError, match="optimizer.name"):
        OptimizerConfig(name="sgd")
    with pytest.raises(ValueError, match="total_steps"):
        OptimizerConfig(schedule="warmup_cosine", warmup_steps=10, total_steps=5)
