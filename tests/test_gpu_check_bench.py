"""bench/gpu_check.sh scaled down on CPU: every figure it prints comes out (step, plan, FSDP2, quantized base,
generation, gpu tier); without CUDA the full check refuses to run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def gpu_check(*args: str, timeout: int, **env: str) -> subprocess.CompletedProcess:
    """`bash bench/gpu_check.sh ARGS` with CUDA hidden (python = this interpreter)."""
    env = dict(os.environ, PY=sys.executable, CUDA_VISIBLE_DEVICES="", **env)
    cmd = ["bash", str(REPO / "bench" / "gpu_check.sh"), *args]
    return subprocess.run(
        cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


def test_gpu_check_refuses_to_run_the_full_model_without_cuda():
    """`bash bench/gpu_check.sh` (no --tiny) with CUDA hidden stops at once, says why and what to do, runs nothing.
    Checked red: without `refuse_without_cuda` the same call went on to build the full FLUX.1-dev step on CPU
    (checked with `flux_step.run` replaced by a stub that raised, so as not to build 12B parameters here)."""
    proc = gpu_check(timeout=120)
    assert proc.returncode != 0
    assert "gpu_check: CUDA is not usable" in proc.stderr and "nothing was run" in proc.stderr
    assert "--tiny" in proc.stderr and "make setup TORCH=" in proc.stderr  # the two ways on
    assert "stage-1 step:" not in proc.stdout and "gpu tier:" not in proc.stdout


@pytest.mark.slow
def test_gpu_check_runs_scaled_down_on_cpu(tmp_path):
    proc = gpu_check("--tiny", "--device", "cpu", timeout=600, OUT=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    for line in (
        "stage-1 step:",
        "in the memory plan",
        "FSDP2, one GPU (6 block units + root)",
        "quantized base (int8, torchao weight-only)",
        "grid generation",
        "gpu tier:",
    ):
        assert line in out
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    assert figures["sec_per_step"] > 0 and figures["plan_gib"] > 0 and figures["generation_s"] > 0
    assert figures["fsdp2"]["units"] == 6 and figures["fsdp2"]["loss"] == figures["fsdp2"]["loss"]  # finite
    quant = figures["quantized"]
    assert quant["mode"] == "int8" and quant["sec_per_step"] > 0 and quant["loss"] == quant["loss"]  # finite
    assert 0 < quant["plan_gib"] < figures["plan_gib"]  # the plan counts the int8 base smaller
    assert "skipped" in out  # no CUDA here: the gpu tier skips, and says so
