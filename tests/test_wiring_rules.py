"""Rules whose only earlier tests sat where the right rule and a plausible wrong one agree: the run-directory refusal
at any depth of checkpoints/, the number of gated rank rows (round to nearest, not down), and "beyond the seed
spread" (the larger of the two rows' spreads).

Each test was checked red against the mutation its docstring names (applied by hand, test run, file restored with
`git checkout`)."""

from __future__ import annotations

import pytest
import torch

from pm_lightning import fit
from pm_lightning.ablation.stats import beyond_spread, paired, summarize
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_routing import set_domains
from pm_lightning.models.adapters import add_adapters, tuner_layers
from tests.helpers import random_inputs, tiny_transformer
from tests.test_fit import small_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def test_a_new_run_refuses_a_directory_with_a_checkpoint_deep_under_checkpoints(
    tmp_path, tiny_base, tiny_shards, capsys
):
    """`python -m pm_lightning.fit` into a run directory whose only checkpoint is checkpoints/a/b/step=3.ckpt (as
    a checkpoint callback with a sub-folder filename writes): refused (exit 2) naming that file, nothing written.
    Checked red: with `folder.glob("*.ckpt")` instead of `rglob` in earlier_checkpoints, the run starts (exit 0)."""
    cfg = small_config(tmp_path, tiny_base, tiny_shards, max_steps=1, every=100)
    deep = tmp_path / "run" / "checkpoints" / "a" / "b" / "step=3.ckpt"
    deep.parent.mkdir(parents=True)
    deep.write_bytes(b"an earlier run's weights")
    before = sorted(p for p in (tmp_path / "run").rglob("*"))
    assert fit.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "already holds another run's checkpoints" in err and "checkpoints/a/b/step=3.ckpt" in err
    assert sorted(p for p in (tmp_path / "run").rglob("*")) == before


@pytest.mark.parametrize(("rank", "fraction", "gated"), [(4, 0.4, 2), (8, 0.3, 2), (16, 0.3, 5), (10, 0.25, 3)])
def test_the_gated_rows_are_rho_r_rounded_half_up(rank, fraction, gated):
    """The masked adapter gates g = round(rho * r) rank rows (half up): 4 x 0.4 = 1.6 -> 2 (floor: 1), 16 x 0.3 =
    4.8 -> 5 (floor: 4), 10 x 0.25 = 2.5 -> 3 (banker's round: 2). Seen in the model: the gate tables are
    (domains, g), and zeroing domain 0's gates equals zeroing the first g rows of A (the other rows stay shared).
    Checked red: with `int(self.mask_fraction * self.rank)` (rounding down) in AdapterConfig.num_gated, the (4, 0.4)
    and (16, 0.3) cases get 1 and 4 rows."""
    model = tiny_transformer()  # unbounded gates: the test sets gate parameters as gate values 0 and 1
    cfg = AdapterConfig(kind="masked", rank=rank, mask_fraction=fraction, num_domains=3, gates="unbounded")
    add_adapters(model, cfg)
    layers = [m for m in tuner_layers(model) if hasattr(m, "lora_gate")]
    assert layers and all(g.shape == (3, gated) for m in layers for g in m.lora_gate.values())
    torch.manual_seed(0)
    with torch.no_grad():
        for m in layers:
            m.lora_B["default"].weight.normal_(0, 0.1)
    inputs = random_inputs(model, batch=1)
    set_domains(model, torch.tensor([0]))
    with torch.no_grad():
        for m in layers:
            m.lora_gate["default"][0].zero_()
        gates_off = model(**inputs)[0]  # (1, N, 64)
        for m in layers:
            m.lora_gate["default"][0].fill_(1.0)
            m.lora_A["default"].weight[:gated].zero_()  # tied A is zeroed once per group: harmless
        rows_off = model(**inputs)[0]
    assert torch.allclose(gates_off, rows_off, atol=1e-6)


def test_beyond_the_seed_spread_means_beyond_the_larger_spread():
    """Rows with seed sds 0.1 and 1.0 and a mean paired difference of 0.5: inside the larger spread, so not beyond
    it (the smaller would say it is); a difference of 1.5 is beyond both.
    Checked red: with `min(sds)` instead of `max(sds)` in beyond_spread the first verdict is True."""
    a = {0: 10.0, 1: 10.1, 2: 10.2}  # sd 0.1
    b = {0: 10.0, 1: 9.0, 2: 8.0}  # sd 1.0
    small = paired({s: v + 0.5 for s, v in b.items()}, b)  # every difference 0.5
    assert small.mean == pytest.approx(0.5)
    assert beyond_spread(small, summarize(list(a.values())), summarize(list(b.values()))) is False
    assert beyond_spread(small, summarize(list(b.values())), summarize(list(a.values()))) is False  # order-free
    big = paired({s: v + 1.5 for s, v in b.items()}, b)
    assert beyond_spread(big, summarize(list(a.values())), summarize(list(b.values()))) is True
