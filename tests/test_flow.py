"""Flow-matching math: interpolation, targets, timestep sampling and shifts."""

import pytest
import torch

from pm_lightning.training.flow import (
    FlowConfig,
    flux_mu,
    interpolate,
    per_sample_mse,
    sample_timesteps,
    shift_timesteps,
    step_generator,
    velocity_target,
)


def test_interpolation_endpoints_and_velocity():
    x0, eps = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    assert torch.equal(interpolate(x0, eps, torch.zeros(3)), x0)
    assert torch.equal(interpolate(x0, eps, torch.ones(3)), eps)
    t = torch.tensor([0.1, 0.5, 0.9])
    dt = 1e-3
    # v = d x_t / d t is the flow-matching target
    fd = (interpolate(x0, eps, t + dt) - interpolate(x0, eps, t)) / dt
    assert torch.allclose(fd, velocity_target(x0, eps), atol=1e-3)


def test_shift_matches_sd3_formula_and_is_monotone():
    t = torch.linspace(0, 1, 11)
    s = 3.1582
    assert torch.allclose(shift_timesteps(t, s), s * t / (1 + (s - 1) * t))
    assert torch.equal(shift_timesteps(t, 1.0), t)
    shifted = shift_timesteps(t, s)
    assert torch.all(shifted[1:-1] > t[1:-1])  # mass moves towards noise
    assert shifted[0] == 0 and shifted[-1] == 1


def test_flux_mu_matches_diffusers():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for n in (16, 144, 256, 1024, 4096):
        assert flux_mu(n) == pytest.approx(calculate_shift(n))


@pytest.mark.parametrize("mode", ["constant", "flux", "none"])
def test_sample_timesteps_range_and_determinism(mode):
    cfg = FlowConfig(shift_mode=mode)
    a = sample_timesteps(1000, cfg, 144, generator=step_generator(0, 7))
    b = sample_timesteps(1000, cfg, 144, generator=step_generator(0, 7))
    c = sample_timesteps(1000, cfg, 144, generator=step_generator(0, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (1000,) and (a > 0).all() and (a < 1).all()


def test_constant_shift_raises_the_median():
    g = step_generator(1, 0)
    plain = sample_timesteps(20000, FlowConfig(shift_mode="none"), 16, generator=g)
    shifted = sample_timesteps(20000, FlowConfig(shift_mode="constant", shift=3.0), 16, generator=step_generator(1, 0))
    assert plain.median() == pytest.approx(0.5, abs=0.02)
    assert shifted.median() == pytest.approx(shift_timesteps(torch.tensor(0.5), 3.0).item(), abs=0.02)


def test_per_sample_mse_with_and_without_weights():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    target[1] *= 2
    assert torch.equal(per_sample_mse(pred, target), torch.tensor([1.0, 4.0]))
    weight = torch.zeros(2, 4, 1)
    weight[:, :2] = 1
    target[:, 2:] = 100  # excluded cells do not count
    assert torch.equal(per_sample_mse(pred, target, weight), torch.tensor([1.0, 4.0]))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="shift_mode"):
        FlowConfig(shift_mode="bogus")
    with pytest.raises(ValueError, match="flow.shift"):
        FlowConfig(shift=0)
