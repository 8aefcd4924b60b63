"""Parameter accounting on the meta device reproduces the ProcessMaker / MakeAnything numbers."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.param_count import count_parameters, format_table, read_configs
from pm_lightning.params import main


@pytest.fixture(scope="module")
def flux_dev() -> dict:
    """`python -m pm_lightning.params --json --variant flux-dev --rank 64 --domains 21`, parsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--json", "--variant", "flux-dev", "--rank", "64", "--domains", "21"])
    return json.loads(out.getvalue())


def test_json_schema(flux_dev):
    assert set(flux_dev) == {"base", "trainable", "rank", "domains"}
    assert set(flux_dev["trainable"]) == {"lora", "asymmetric", "masked"}
    assert (flux_dev["rank"], flux_dev["domains"]) == (64, 21)
    assert all(isinstance(v, int) for v in [flux_dev["base"], *flux_dev["trainable"].values()])


def test_flux_dev_matches_the_papers(flux_dev):
    t = flux_dev["trainable"]
    assert abs(flux_dev["base"] - 11_901_408_320) == 0  # FLUX.1-dev transformer, 11.9B
    assert abs(t["masked"] - 306.32e6) / 306.32e6 < 0.01  # ProcessMaker Table 3
    assert t["lora"] == 306_315_264  # the fused-layer LoRA: exactly the table's 306.32M
    assert abs(t["asymmetric"] - 4.19e9) / 4.19e9 < 0.005  # MakeAnything row of the same table
    assert t["masked"] - t["lora"] == (19 * 10 + 38 * 3) * 21 * 19  # gates: 304 fused layers x 21 domains x 19 rows
    assert t["masked"] / t["asymmetric"] < 0.08 and t["masked"] / t["asymmetric"] > 0.07  # the 7.3% claim


def test_kinds_are_ordered(flux_dev):
    t = flux_dev["trainable"]
    assert t["lora"] < t["masked"] < t["asymmetric"]


def test_tiny_counts_and_table():
    counts = count_parameters(
        "flux-dev", AdapterConfig(rank=1, num_domains=2, target_modules=["proj_out"]), kinds=("lora",)
    )
    # 38 single-block proj_out Linears (15360 -> 3072) at rank 1
    assert counts["trainable"]["lora"] == 38 * (15360 + 3072)
    assert "lora" in format_table(counts)


def test_read_configs(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text(
        "model:\n  init_args:\n    base: flux-dev\n    adapter: {kind: masked, rank: 32}\ndata:\n  domains: [x]\n"
    )
    b.write_text("data:\n  domains: [x, y, z]\n")
    assert read_configs([str(a), str(b)]) == ("flux-dev", {"kind": "masked", "rank": 32}, 3)
