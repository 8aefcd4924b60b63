#!/usr/bin/env bash
# One GPU check of the FLUX.1-dev path, under 8 minutes on one H100 / H200, no download (random weights):
# the stage-1 step (time, MFU vs the card's bf16 dense peak, peak memory next to the memory plan's figure), the same
# step under single-GPU FSDP2, the step over a quantized frozen base, a 28-step 1024-px grid, then the `gpu` pytest tier.
#   bash bench/gpu_check.sh            # or: make bench-gpu-check
#   bash bench/gpu_check.sh --tiny     # the scaled-down shape on CPU (the gpu tier then skips: no CUDA)
# Without a usable CUDA GPU the full check stops at once and says why (CPU torch, a driver too old for the CUDA 13
# build, no device) and how to build a CUDA 12 venv; it never runs the 12B model on CPU.
# The quantized-base step runs with `--quant auto|none|int8|fp8|nf4` (auto: fp8 on Ada / Hopper, else int8).
# Figures also go to $OUT/gpu_check.json when OUT is set. Run on one H200 on 2026-12-04 (docs/BENCHMARKS.md, "GPU check";
# under torch 2.11 cuDNN's fused attention failed there: `--no-cudnn-attention` turns it off).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
start=$(date +%s)
json=()
if [[ -n "${OUT:-}" ]]; then json=(--json "$OUT/gpu_check.json"); fi
"$PY" bench/gpu_check.py "$@" "${json[@]}"
echo "gpu tier:"
"$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider </dev/null
echo "gpu_check: $(( $(date +%s) - start )) s in all"
