"""The alignment loss's gamma and the layer settings, written for the mutants of `models/alignment.py` that the older
tests let through (docs/TESTING.md, "Mutation testing"); each test was checked red by hand against the mutants its
docstring names (the mutant's edit applied to the module, the test run and seen failing, the module restored)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pm_lightning.models.alignment import AlignmentConfig, alignment_loss, alignment_weight, resolve_layers


def written_out(student: dict, teacher: dict, gamma: float) -> torch.Tensor:
    """L_sup per sample from the module docstring: mean over layers of mean_tokens(1 - cos) + gamma * mean MSE."""
    per_layer = [
        (1 - F.cosine_similarity(teacher[i], student[i], dim=-1)).mean(-1)
        + gamma * (teacher[i] - student[i]).pow(2).mean(-1).mean(-1)
        for i in teacher
    ]  # L x (B,)
    return torch.stack(per_layer).mean(0)  # (B,)


@pytest.mark.parametrize("gamma", [None, 0.0, 2.0])
def test_alignment_loss_weights_the_mse_by_the_given_gamma_and_by_default_by_the_config_s(gamma):
    """gamma reaches every layer's distance (0 leaves the cosine part alone, 2 weighs the MSE twice), and without it
    the loss uses AlignmentConfig's default gamma (ProcessMaker's 0.1), as the stage-1 configuration does.
    Checked red with the default `gamma: float = 1.1` and with `layer_distance(teacher[i], student[i], )` (gamma not
    passed on) in `alignment_loss`."""
    g = torch.Generator().manual_seed(0)
    teacher = {i: torch.randn(2, 5, 8, generator=g) for i in (1, 4)}  # (B, N, C) per layer
    student = {i: torch.randn(2, 5, 8, generator=g) for i in (1, 4)}
    if gamma is None:
        loss, expected = alignment_loss(student, teacher), written_out(student, teacher, AlignmentConfig().gamma)
    else:
        loss, expected = alignment_loss(student, teacher, gamma), written_out(student, teacher, gamma)
    torch.testing.assert_close(loss, expected)


def test_zero_lambda0_and_zero_gamma_are_accepted_and_give_no_alignment_weight_and_a_cosine_only_distance():
    """The bounds are inclusive: lambda0 = 0 (the term weighted away) and gamma = 0 (cosine part only) are valid
    settings, and they mean what they say; a negative value is still refused, naming the field.
    Checked red with `self.lambda0 <= 0` and `self.gamma <= 0` in `AlignmentConfig.__post_init__`."""
    cfg = AlignmentConfig(lambda0=0.0, gamma=0.0)
    g = torch.Generator().manual_seed(1)
    teacher, student = {0: torch.randn(3, 4, 8, generator=g)}, {0: torch.randn(3, 4, 8, generator=g)}  # (B, N, C)
    cosine = (1 - F.cosine_similarity(teacher[0], student[0], dim=-1)).mean(-1)  # (B,)
    torch.testing.assert_close(alignment_loss(student, teacher, cfg.gamma), cosine)
    assert torch.equal(alignment_weight(torch.rand(3, generator=g), cfg), torch.zeros(3))
    for field in ("lambda0", "gamma"):
        with pytest.raises(ValueError, match=f"AlignmentConfig.{field} must be >= 0"):
            AlignmentConfig(**{field: -0.1})


def test_layer_settings_accept_every_valid_value_and_refuse_the_others_naming_the_bounds():
    """Explicit layers, block 0 included, are kept and resolved sorted; an empty, negative or repeated list is refused
    naming the field; an index past the model's last block names the valid range [0, n - 1]; a model of no block and a
    reference depth under 2 are refused, and a reference depth of 2 (first and last block) is valid.
    Checked red with, in `AlignmentConfig.__post_init__`, `self.layers = None`, `not self.layers and min(...)`,
    `if self.layers or ...`, `min(self.layers) <= 0` and `< 1`; in `AlignmentConfig.resolve`, `self.layers` left out;
    in `resolve_layers`, the range printed as `num_blocks + 1` / `- 2`, `reference_depth <= 2` / `< 3`, and either
    error raised without its message."""
    cfg = AlignmentConfig(layers=[3, 0])
    assert cfg.layers == [3, 0] and cfg.resolve(6) == [0, 3]
    for bad in ([], [-1], [2, 2]):
        with pytest.raises(ValueError, match=r"AlignmentConfig.layers must be unique non-negative block indices"):
            AlignmentConfig(layers=bad)
    with pytest.raises(ValueError, match=r"in \[0, 5\]; bad: \[6\]"):
        AlignmentConfig(layers=[1, 6]).resolve(6)
    with pytest.raises(ValueError, match="num_blocks must be >= 1, got 0"):
        resolve_layers(0)
    with pytest.raises(ValueError, match="reference_depth must be >= 2, got 1"):
        resolve_layers(6, reference_depth=1, reference_layers=(0,))
    assert resolve_layers(6, reference_depth=2, reference_layers=(0, 1)) == [0, 5]
