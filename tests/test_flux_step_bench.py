"""bench/flux_step.py in its CPU mode: a real stage-1 step runs, and its FLOP count matches independent counts."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import load_bench

BENCH = Path(__file__).resolve().parents[1] / "bench" / "flux_step.py"


@pytest.fixture(scope="module")
def fs():
    return load_bench(BENCH.name, "flux_step")


@pytest.fixture(scope="module")
def st(fs):
    """bench/step_setup.py, as bench/flux_step.py imported it (one copy of its classes)."""
    return sys.modules["step_setup"]


@pytest.fixture(scope="module")
def setup(fs):
    return fs.parse_args(["--device", "cpu"])[1]


@pytest.fixture(scope="module")
def counts(st, setup) -> dict[str, int]:
    """Meta-device counts of the scaled-down step: with / without recomputation, and the forward alone."""
    return {
        "executed": st.count_flops(setup, checkpointing=True),
        "model": st.count_flops(setup, checkpointing=False),
        "forward": st.count_flops(setup, checkpointing=True, what="forward"),
    }


def test_cpu_mode_runs_and_reports(fs, counts):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = fs.main(["--device", "cpu", "--steps", "1", "--warmup", "1", "--peak-flops", "1e12"])
    text = out.getvalue()
    assert "scaled-down" in text and "| seconds per step (median) |" in text
    for key in (
        "sec_per_step",
        "peak_gib",
        "model_flops",
        "executed_flops",
        "achieved_flops",
        "mfu",
        "hfu",
        "trainable",
    ):
        assert result[key] > 0, key
    assert (result["executed_flops"], result["model_flops"]) == (counts["executed"], counts["model"])
    assert result["executed_flops"] > result["model_flops"]  # recomputation under checkpointing
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert result["setup"].image_tokens == 16 * 16 and result["setup"].text_tokens == 32


def _linear_and_attention_flops(module, batch, setup) -> int:
    """2 x MACs of every nn.Linear call (base, LoRA A and B) + 4 B T^2 D per block for attention."""
    total = 0

    def hook(mod, args, output):
        nonlocal total
        total += 2 * (args[0].numel() // mod.in_features) * mod.in_features * mod.out_features

    model = module.transformer
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        x0, cond = module.encode_batch(batch)
        model(**module.transformer_inputs(x0, torch.full((setup.batch,), 0.5), cond))
    finally:
        for h in handles:
            h.remove()
    cfg = model.config
    width = cfg.num_attention_heads * cfg.attention_head_dim
    tokens = setup.image_tokens + setup.text_tokens
    blocks = cfg.num_layers + cfg.num_single_layers
    return total + blocks * 4 * setup.batch * tokens**2 * width


def test_forward_flops_match_an_independent_count(st, setup, counts):
    counted = counts["forward"]
    module = st.build_module(setup, "cpu")
    independent = _linear_and_attention_flops(module, st.make_batch(setup, "cpu"), setup)
    assert abs(counted - independent) / independent < 0.01, (counted, independent)


def test_meta_count_equals_a_real_step(st, setup, counts):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    module = st.build_module(setup, "cpu")
    # the CPU flash-attention kernel has no FLOP formula; the math backend runs (and counts) bmm as on meta
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        st.train_step(module, None, st.make_batch(setup, "cpu"), setup, "cpu")
    assert counter.get_total_flops() == counts["executed"]


def test_recompute_adds_one_forward_of_the_blocks(counts):
    executed, model_flops, forward = counts["executed"], counts["model"], counts["forward"]
    # checkpointing re-runs every block's forward once: less than a whole forward (embedders are not recomputed)
    assert 0.9 * forward < executed - model_flops <= forward


def test_peak_table(fs):
    assert fs.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert fs.peak_flops("NVIDIA H200", None) == 989e12
    assert fs.peak_flops("NVIDIA H200 NVL", None) == 835e12  # the NVL card, not the SXM figure
    assert fs.peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert fs.peak_flops("NVIDIA A100-SXM4-80GB", None) == 312e12
    assert fs.peak_flops("NVIDIA RTX A6000", None) == 155e12
    assert fs.peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert fs.peak_flops("unknown", 1e15) == 1e15 and fs.peak_flops("unknown", None) is None
