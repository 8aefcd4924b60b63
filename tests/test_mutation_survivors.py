"""Tests written for mutants that survived `make mutation` (docs/TESTING.md lists them): each names the mutants it
kills; each was checked red by applying one of them by hand (`mutmut apply`, or the edit named) and restored."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from pm_lightning.ablation.stats import beyond_spread, paired, summarize
from pm_lightning.data.grid import (
    frames_to_grid,
    grid_to_frames,
    layout_for,
    tensor_frames_to_grid,
    tensor_grid_to_frames,
)
from pm_lightning.training.flow import FlowConfig, flux_mu, per_sample_mse, sample_timesteps, step_generator
from pm_lightning.training.nonfinite import NonFiniteGuard, NonFiniteTraining, last_checkpoint


def test_the_last_good_checkpoint_named_in_the_stop_message(tmp_path):
    """What the non-finite stop message names: the last checkpoint, else the best, else "none written yet" (no
    checkpoint callback, or none written, or no trainer). Kills nonfinite.x_last_checkpoint mutants 19, 22-31, 33,
    34 (a missing default, another attribute or message); checked red with `"XXXX"` as the default of
    `last_model_path`. Also mutant 8 (`getattr` without its default): an object without a checkpoint callback
    attribute at all; checked red by that edit."""
    from types import SimpleNamespace

    assert last_checkpoint(None) == "none written yet" == last_checkpoint(SimpleNamespace(global_step=3))
    bare = L.Trainer(enable_checkpointing=False, logger=False, default_root_dir=tmp_path)
    assert bare.checkpoint_callback is None and last_checkpoint(bare) == "none written yet"
    callback = ModelCheckpoint(dirpath=tmp_path)
    trainer = L.Trainer(callbacks=[callback], logger=False, default_root_dir=tmp_path)
    assert last_checkpoint(trainer) == "none written yet"
    callback.best_model_path = str(tmp_path / "best.ckpt")
    assert last_checkpoint(trainer) == str(tmp_path / "best.ckpt")
    callback.last_model_path = str(tmp_path / "last.ckpt")
    assert last_checkpoint(trainer) == str(tmp_path / "last.ckpt")


class OneWeight(L.LightningModule):
    """The module interface NonFiniteGuard reads: trainable parameters, a device, no trainer (one process)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.w]


def test_the_guard_s_verdict_on_the_loss_and_on_the_gradients_alone():
    """A non-finite loss with finite gradients is bad; an absent loss (a step that returned None) with no gradient
    is fine and leaves no gradient norm; finite values are fine. Kills nonfinite.x_NonFiniteGuard_finite mutants 5
    (a norm of no gradients), 13 (`loss is None`), 19 and 23 (no values: torch.cat of nothing, or False); checked
    red with `if loss is None` in `finite`."""
    guard, w = NonFiniteGuard(3), torch.nn.Parameter(torch.ones(2))
    w.grad = torch.ones(2)
    assert guard.finite(torch.tensor(float("nan")), [w]) is False and float(guard.grad_norm) == pytest.approx(2**0.5)
    assert guard.finite(torch.tensor(1.0), [w]) is True
    w.grad = None
    assert guard.finite(None, [w]) is True and guard.grad_norm is None
    assert guard.finite(torch.tensor(float("inf")), [w]) is False


def test_the_guard_counts_every_skipped_step_and_stops_at_the_limit_in_a_row():
    """NaN, NaN, good, NaN, NaN, good: four skipped (not one), never three in a row; then three NaNs in a row stop
    with the count and the step. Kills nonfinite.x_NonFiniteGuard_check mutants 35 (`skipped = 1`), 42, 52, 68 (the message's
    terms and its advice); checked red with `skipped = 1` and with `"XX, XX".join` applied by hand."""
    guard, module = NonFiniteGuard(3), OneWeight()
    module.w.grad = torch.ones(2)
    nan, good = torch.tensor(float("nan")), torch.tensor(1.0)
    verdicts = [guard.check(module, loss) for loss in (nan, nan, good, nan, nan, good)]
    assert verdicts == [False, False, True, False, False, True] and guard.skipped == 4 and guard.consecutive == 0
    assert guard.check(module, nan) is False and guard.check(module, nan) is False
    with pytest.raises(NonFiniteTraining, match="3 consecutive steps .* step 0 .loss terms: not recorded.") as err:
        guard.check(module, nan)
    assert guard.skipped == 7 and "none written yet" in str(err.value)
    assert str(err.value).endswith("precision), or raise model.init_args.max_nonfinite_steps.")
    module.last_terms = {"loss/fm": nan, "loss/total": good}
    with pytest.raises(NonFiniteTraining, match=r"loss terms: loss/fm=nan, loss/total=1\)"):
        NonFiniteGuard(1).check(module, nan)


def test_grid_errors_name_the_problem_and_a_single_frame_is_a_1x1_grid():
    """A grid whose width alone (or height alone) does not split is refused, by the PIL and the tensor cutters,
    each error saying what is wrong; one frame is a 1x1 layout. Kills data.grid mutants grid_to_frames 2 and
    tensor_grid_to_frames 2 (`or` -> `and`), frames_to_grid 9, tensor_frames_to_grid 4, tensor_grid_to_frames 5
    (messages), layout_for 22 (`frames > 1`); checked red with `gw % cols and gh % rows` in grid_to_frames."""
    for size in ((97, 96), (96, 97)):
        with pytest.raises(ValueError, match=r"does not split into 3x3 equal cells"):
            grid_to_frames(Image.new("RGB", size), 3, 3)
        with pytest.raises(ValueError, match=r"does not split into 3x3 equal cells"):
            tensor_grid_to_frames(torch.zeros(3, size[1], size[0]), 3, 3)
    with pytest.raises(ValueError, match="^all frames must have the same size$"):
        frames_to_grid([Image.new("RGB", (8, 8))] * 3 + [Image.new("RGB", (8, 9))], 2, 2)
    with pytest.raises(ValueError, match="3 frames for a 2x2 grid"):
        tensor_frames_to_grid(torch.zeros(3, 3, 8, 8), 2, 2)
    assert layout_for(1) == (1, 1)


def test_timesteps_follow_the_logit_normal_and_the_flux_shift_and_the_config_bounds():
    """t = shift(sigmoid(mean + std * z)) with z the generator's normal draws, for a mean and std other than 0 and 1
    and for the "flux" shift mode; shifts in (0, 1] are accepted, logit_std 0 is refused by name. Kills flow mutants
    sample_timesteps 2, 3 (`- mean`, `/ std`), 20, 21 (the flux branch never taken), FlowConfig.__post_init__ 4, 6, 8;
    checked red with `- cfg.logit_mean`."""
    for mode in ("none", "constant", "flux"):
        cfg = FlowConfig(shift_mode=mode, shift=0.5, logit_mean=0.7, logit_std=0.4)
        t = sample_timesteps(64, cfg, 256, generator=torch.Generator().manual_seed(3))
        plain = torch.sigmoid(torch.randn(64, generator=torch.Generator().manual_seed(3)) * 0.4 + 0.7)
        shift = {"none": 1.0, "constant": 0.5, "flux": math.exp(flux_mu(256))}[mode]
        assert torch.allclose(t, shift * plain / (1 + (shift - 1) * plain))
    with pytest.raises(ValueError, match="flow.logit_std must be > 0"):
        FlowConfig(logit_std=0.0)


def test_noise_never_repeats_over_many_steps_and_the_masked_mse_divides_by_the_weights():
    """step_generator: 2000 consecutive steps of one seed and rank all start differently (a modulus of 125 instead of
    2**63 - 1 repeats them). per_sample_mse with weights: a sample with one weighted element is that element's squared
    error. Kills flow mutants step_generator 16, per_sample_mse 3 (`pred + target`) and 23 (`clamp_min(2)`); checked
    red with `% (2 * 63 - 1)`."""
    firsts = {float(torch.randn(1, generator=step_generator(0, step, 1))) for step in range(2000)}
    assert len(firsts) == 2000
    pred, target = torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([[0.5, 2.0], [1.0, 1.0]])
    weight = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(per_sample_mse(pred, target, weight), torch.tensor([0.25, 10.0]))
    assert torch.allclose(per_sample_mse(pred, target), torch.tensor([0.125, 10.0]))


def test_one_shared_seed_gives_its_difference_without_an_interval_and_a_tie_is_not_beyond_the_spread():
    """paired() over one shared seed: n 1, that difference, no interval. A mean difference exactly equal to the
    larger seed sd (2.0) is not beyond it ("larger than"). Kills ablation.stats mutants paired 19, 20 (n or diffs
    dropped) and beyond_spread 7 (`>=`); checked red with `>=` in beyond_spread."""
    one = paired({0: 3.0, 1: 1.0}, {0: 1.0, 2: 0.0})
    assert (one.n, one.diffs, one.mean, one.low, one.high, one.excludes_zero) == (1, [2.0], 2.0, None, None, None)
    tie = paired({0: 3.0, 1: 4.0, 2: 5.0}, {0: 1.0, 1: 2.0, 2: 3.0})  # every difference 2.0
    assert beyond_spread(tie, summarize([1.0, 3.0, 5.0]), summarize([0.0, 1.0, 2.0])) is False  # sds 2.0 and 1.0


def test_no_value_summarizes_to_zero_values_and_every_paired_result_keeps_its_level():
    """summarize() of nothing usable (None, NaN) counts 0 values; paired() carries the level it was asked for, with
    and without an interval (the report prints it). Kills ablation.stats mutants summarize 9, 13 (n None or 1 for
    no values) and paired 22, 49 (the level dropped); checked red with `Summary(1, None, None)` and with `None` as
    the level of the interval branch."""
    for nothing in ([], [None], [float("nan"), None]):
        assert (summarize(nothing).n, summarize(nothing).mean, summarize(nothing).sd) == (0, None, None)
    assert paired({0: 1.0}, {0: 0.5}, level=0.9).level == 0.9
    assert paired({0: 1.0, 1: 2.0, 2: 2.5}, {0: 0.5, 1: 0.5, 2: 1.0}, level=0.8).level == 0.8


class OtherRank:
    """Strategy.reduce's contract on two ranks, the other rank's verdict given: "sum" adds it, "mean" averages;
    another op is an error, as in torch.distributed."""

    def __init__(self, other_bad: float):
        self.other_bad, self.calls = other_bad, []

    def reduce(self, tensor, reduce_op=None):
        self.calls.append(reduce_op)
        total = tensor + self.other_bad
        if reduce_op == "sum":
            return total
        if reduce_op in ("mean", "avg"):
            return total / 2
        raise ValueError(f"unsupported reduce_op {reduce_op!r}")


def test_a_bad_step_on_another_rank_makes_this_rank_skip_too():
    """On two ranks the verdict is summed over ranks: this rank's finite step is skipped (and counted) when the other
    rank's was not, taken when both were fine. Kills nonfinite.x_NonFiniteGuard_check mutants 20, 21, 25 (the
    reduce's tensor or op changed or dropped: until now only the slow 2-rank gloo test reached that branch);
    checked red with `reduce(bad, reduce_op="mean")`, `reduce(bad)` and `reduce(None, reduce_op="sum")`."""
    from types import SimpleNamespace

    for other_bad, verdict in ((1.0, False), (0.0, True)):
        guard, module, strategy = NonFiniteGuard(3), OneWeight(), OtherRank(other_bad)
        module.w.grad = torch.ones(2)
        module._trainer = SimpleNamespace(world_size=2, strategy=strategy, global_step=7)
        assert guard.check(module, torch.tensor(1.0)) is verdict
        assert strategy.calls == ["sum"] and guard.skipped == (0 if verdict else 1)


@pytest.mark.parametrize(
    "kwargs, ok",
    [
        ({"rank": 1}, True),
        ({"alpha": 0.5}, True),
        ({"alpha": 0.0}, False),
        ({"mask_fraction": 0.0}, True),
        ({"mask_fraction": 1.0}, True),
        ({"mask_fraction": 1.01}, False),
    ],
)
def test_adapter_settings_at_their_bounds(kwargs, ok):
    """The edges of AdapterConfig's ranges: rank 1, alpha below 1, no gated rows (0.0) and all rows gated (1.0) are
    valid; alpha 0 is not. Kills models.adapter_config AdapterConfig.__post_init__ mutants 5, 6 (rank 1 refused),
    11 (alpha 0 accepted), 12 (alpha in (0, 1] refused), 26, 27 (mask_fraction 0 or 1 refused); checked red with
    `self.rank < 2` and with `0.0 < self.mask_fraction`."""
    from pm_lightning.models.adapter_config import AdapterConfig

    if ok:
        cfg = AdapterConfig(**kwargs)
        assert all(getattr(cfg, k) == v for k, v in kwargs.items())
    else:
        with pytest.raises(ValueError, match=f"AdapterConfig.{next(iter(kwargs))} must be"):
            AdapterConfig(**kwargs)
