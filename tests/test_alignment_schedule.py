"""lambda(t) that varies with t: s(t) = (1 - t) / E_t[1 - t] (`alignment: {schedule: linear, normalize: true}`), and the
plans' comparison row with s(t) = 1 (`masked_align_const`, Holm family `design`).

The normaliser E_t[s(t)] is computed by Gauss-Hermite quadrature over the training timestep sampler
(`flow.timestep_mean`, sharing `flow.timesteps_from_normal` with `sample_timesteps`); checked here against a
Monte-Carlo mean of the real sampler, through the stage-1 module's own settings, in a real step's loss and gradient,
and at config load. Checked red: with the quadrature weights divided by sqrt(pi) instead of sqrt(2 pi) in
`flow._hermite_rule`, the Monte-Carlo and mean-1 tests fail (every mean off by sqrt(2)); with the quadrature's
timesteps mapped by a plain FlowConfig(shift_mode="none") instead of the given one, they fail for every sampler but
the plain one; with Stage1Module.schedule_mean reading FlowConfig() instead of the module's flow settings, the
real-step test fails."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from pm_lightning import fit
from pm_lightning.ablation.plan import load_plan, select
from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.pixels import float_pixels
from pm_lightning.models.adapters import adapter_parameters
from pm_lightning.models.alignment import SCHEDULES, AlignmentConfig, alignment_weight
from pm_lightning.training.flow import FlowConfig, sample_timesteps, step_generator, timestep_mean
from pm_lightning.training.stage1 import Stage1Module
from tests.conftest import REPO, TRAIN_DOMAINS
from tests.test_wiring_stage1 import stage1

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step outside a Trainer

NORMALISED = AlignmentConfig(enabled=True, lambda0=0.5, schedule="linear", normalize=True)
SAMPLERS = {  # the shipped stage-1 sampler, Flux's resolution shift, the plain logit-normal, an off-centre one
    "constant": FlowConfig(),
    "flux": FlowConfig(shift_mode="flux"),
    "none": FlowConfig(shift_mode="none"),
    "none-wide": FlowConfig(shift_mode="none", logit_mean=-0.5, logit_std=1.7),
}
TOKENS = 144  # a 192-px grid: (192 / 16)^2 image tokens


@pytest.fixture(scope="module")
def batch(tiny_shards) -> dict:
    """One batch of 4 training grids (96 px), pixels in [-1, 1] as the Trainer hands them to the step."""
    dm = ProcessDataModule(
        tiny_shards["train"], domains=TRAIN_DOMAINS, resolution=96, batch_size=4, num_workers=0, shuffle_buffer=16
    )
    return float_pixels(next(iter(dm.train_dataloader())))


def drawn(cfg: FlowConfig, n: int = 200_000, seed: int = 3) -> torch.Tensor:
    """n timesteps from the real sampler, float64."""
    return sample_timesteps(n, cfg, TOKENS, generator=step_generator(seed, 0)).double()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_normaliser_equals_a_monte_carlo_mean_of_the_sampler(name):
    """E_t[1 - t] by quadrature lies within 4 standard errors of the mean of 200,000 draws of `sample_timesteps`,
    and differs between samplers by far more than that (the normaliser follows the sampler's shift)."""
    cfg = SAMPLERS[name]
    exact = timestep_mean(SCHEDULES["linear"], cfg, TOKENS)
    s = 1 - drawn(cfg)
    stderr = s.std().item() / math.sqrt(s.numel())
    assert abs(exact - s.mean().item()) < 4 * stderr, (exact, s.mean().item(), stderr)
    plain = timestep_mean(SCHEDULES["linear"], SAMPLERS["none"], TOKENS)
    assert name.startswith("none") or plain - exact > 100 * stderr  # a shift moves mass to noise: smaller E[1 - t]


def test_the_normaliser_of_flux_s_shift_follows_the_resolution():
    """Flux's shift grows with the image token count, so E_t[1 - t] falls; each value matches its own draws."""
    cfg = SAMPLERS["flux"]
    small, large = (timestep_mean(SCHEDULES["linear"], cfg, n) for n in (16, 4096))
    assert small > large + 0.05
    for n, exact in ((16, small), (4096, large)):
        s = 1 - sample_timesteps(200_000, cfg, n, generator=step_generator(5, 0)).double()
        assert abs(exact - s.mean().item()) < 4 * s.std().item() / math.sqrt(s.numel())


def test_the_normalised_schedule_is_monotone_and_has_mean_one_over_the_module_s_sampler(tiny_base):
    """Through the stage-1 module's own normaliser (its flow settings): lambda(t) / lambda0 falls strictly from t = 0
    to t = 1, ends at 0, and averages 1 over the training timesteps (by quadrature, and over 200,000 draws); the
    constant schedule normalised is the constant 1."""
    module = Stage1Module(base=tiny_base, domains=TRAIN_DOMAINS, alignment=NORMALISED, flow=SAMPLERS["constant"])
    mean = module.schedule_mean(TOKENS)
    assert 0.2 < mean < 0.35  # the shifted sampler's E[1 - t]: most draws are noisy (median t 0.76)
    grid = torch.linspace(0, 1, 101)
    s = alignment_weight(grid, NORMALISED, mean) / NORMALISED.lambda0
    assert (s[1:] < s[:-1]).all() and s[-1] == 0 and s[0] > 3  # 1 / E[1 - t] at t = 0
    quad = timestep_mean(
        lambda t: alignment_weight(t, NORMALISED, mean).double() / NORMALISED.lambda0, module.flow_cfg, TOKENS
    )
    assert quad == pytest.approx(1.0, abs=1e-6)
    w = alignment_weight(drawn(module.flow_cfg).float(), NORMALISED, mean) / NORMALISED.lambda0
    assert w.double().mean().item() == pytest.approx(1.0, abs=4 * w.double().std().item() / math.sqrt(w.numel()))
    const = AlignmentConfig(enabled=True, schedule="constant", normalize=True)
    const_mean = timestep_mean(SCHEDULES["constant"], module.flow_cfg, TOKENS)
    assert const_mean == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(alignment_weight(grid, const, const_mean), torch.full_like(grid, 0.5))


def test_normalize_without_the_sampler_s_mean_is_refused_and_off_by_default():
    """alignment_weight cannot normalise without E_t[s(t)] (models/ does not read the sampler): it refuses a missing
    or non-positive mean instead of leaving s(t) unnormalised; normalize is off by default (tiny.yaml's meaning)."""
    t = torch.rand(4)
    for bad in (None, 0.0):
        with pytest.raises(ValueError, match="normalize"):
            alignment_weight(t, NORMALISED, bad)
    assert AlignmentConfig().normalize is False
    assert torch.equal(alignment_weight(t, AlignmentConfig(schedule="linear")), 0.5 * (1 - t))


def test_a_real_step_weights_each_sample_by_the_normalised_schedule_and_the_gradient_reaches_the_adapters(
    tiny_base, batch
):
    """One stage-1 step on the tiny base: lambda per sample is lambda0 (1 - t_b) / E_t[1 - t] of the module's sampler
    at the batch's token count, the returned loss is mean_b[L_fm + lambda L_sup], and the weighted alignment term
    alone sends a finite, non-zero gradient into the adapters (B moved off zero, so the student differs). The sampler
    is Flux's resolution shift, off-centre, so the normaliser depends on both the flow settings and the token count."""
    flow = dict(shift_mode="flux", logit_mean=0.3)
    module = stage1(tiny_base, NORMALISED, flow=FlowConfig(**flow))
    terms = module.losses(batch, step=0)
    tokens = module.encode_batch(batch)[0].shape[1]  # (B, N, 64): N image tokens
    mean = timestep_mean(SCHEDULES["linear"], FlowConfig(**flow), tokens)
    torch.testing.assert_close(terms["lambda"], 0.5 * (1 - terms["t"]) / mean)
    assert terms["lambda"].unique().numel() == terms["lambda"].numel()  # it varies with t
    (terms["lambda"] * terms["align"]).mean().backward()
    grads = [p.grad for p in adapter_parameters(module.transformer) if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    module.zero_grad()
    loss = module.training_step(batch, 0)
    expected = (terms["fm"] + terms["lambda"] * terms["align"]).mean().detach()
    assert loss.detach().item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("alignment", "named"),
    [
        ("{enabled: true, schedule: linear, normalise: true}", "alignment: Option 'normalise' is not accepted"),
        ("{enabled: true, schedule: linear, normalize: sometimes}", "alignment.normalize: Expected a <class 'bool'>"),
        ("{enabled: true, schedule: linaer, normalize: true}", "AlignmentConfig.schedule: unknown 'linaer'"),
    ],
    ids=["misspelt-key", "not-a-bool", "unknown-schedule"],
)
def test_a_bad_alignment_key_fails_at_load_naming_it(alignment, named, tmp_path, monkeypatch, capsys):
    """An overlay with a wrong alignment key or value stops `fit` while the config is parsed (exit 2, one error, the
    key and the value named), before any model is built."""
    from pm_lightning.models import backbone

    def never(*a, **k):
        raise AssertionError("a model was built before the config was validated")

    monkeypatch.setattr(backbone.FluxBackbone, "from_pretrained", never)
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(f"model:\n  init_args:\n    alignment: {alignment}\n")
    try:
        code = fit.main(["--config", "experiments/tiny.yaml", "--config", str(overlay)])
    except SystemExit as exit_:  # jsonargparse's own refusals exit; fit's checks of values return 2
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if ": error: " in line]) == 1 and named in err, err[-2000:]


def test_the_shipped_masked_align_row_and_fabric_toys_use_the_normalised_schedule_and_tiny_keeps_constant():
    """The ablation's masked + alignment row and the FLUX.1-dev experiment set s(t) = (1 - t) / E_t[1 - t]; the
    `make train-stage1` default (experiments/tiny.yaml) keeps the constant schedule."""

    def alignment(path: str) -> dict:
        return yaml.safe_load(Path(REPO / path).read_text())["model"]["init_args"]["alignment"]

    for path in ("experiments/ablations/masked_align.yaml", "experiments/fabric_toys.yaml"):
        assert (alignment(path)["schedule"], alignment(path)["normalize"]) == ("linear", True), path
    assert alignment("experiments/tiny.yaml")["schedule"] == "constant"
    assert not alignment("experiments/tiny.yaml").get("normalize", False)


@pytest.mark.parametrize("plan_file", ["tiny.yaml", "fabric_toys.yaml"])
def test_the_constant_schedule_row_is_a_design_row_of_a_plain_run_kept_out_of_quick(plan_file):
    """Each ablation plan has masked_align_const: masked_align's overlay with s(t) = 1 (no normalising), in a plain
    run but not in --quick, and its contrasts against masked_align in their own Holm family `design` (the claims'
    adjusted p-values do not change with it). Checked red: without the plan's `quick: rows:` entry, --quick runs it."""
    path = REPO / "experiments" / "ablations" / "plans" / plan_file
    plan = load_plan(path)
    row = plan.rows["masked_align_const"]
    assert row.overlay == plan.rows["masked_align"].overlay == "experiments/ablations/masked_align.yaml"
    assert row.args == {"model.init_args.alignment.schedule": "constant", "model.init_args.alignment.normalize": False}
    assert "masked_align_const" in select(load_plan(path)).active_rows
    quick = select(load_plan(path, quick=True))
    assert "masked_align_const" not in quick.active_rows and "masked_align" in quick.active_rows
    design = [c for c in plan.contrasts if "masked_align_const" in (c.a, c.b)]
    assert design and all((c.a, c.b, c.family) == ("masked_align", "masked_align_const", "design") for c in design)
    assert {c.metric for c in design} == {"align", "unseen_align"}
    assert not [c for c in quick.contrasts if c.family == "design"]
