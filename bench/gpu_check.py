"""One GPU check of the FLUX.1-dev path (random weights, no download), the Python half of `bench/gpu_check.sh`.

    .venv/bin/python bench/gpu_check.py                 # GPU: FLUX.1-dev shape, bf16, 1024-px 3x3 grid (4096 + 512 tokens)
    .venv/bin/python bench/gpu_check.py --tiny          # CPU: the scaled-down shape, same code path (tests run this)

Prints, for one stage-1 step (masked LoRA rank 64 over 21 domains, alignment at blocks 4/9/14/19/29, batch 1,
gradient checkpointing, CAME, precomputed random text embeddings; `bench/flux_step.py`'s step):
seconds per step, model-FLOPs utilisation against the card's bf16 dense peak, peak memory
(`torch.cuda.max_memory_allocated`) next to the memory plan's figure for the same setup (`pm_lightning.memory_plan`'s
single-GPU DDP column without the DDP buckets, the VAE and the CUDA context, none of which the bench allocates);
the same step under single-GPU FSDP2 (`shard_flux` on a one-rank mesh); the same step with the frozen base quantized
(`--quant`, default fp8 on an Ada / Hopper GPU, else int8; `model.init_args.quantize`, torchao weight-only) next to
the plan's figure for it; and the time of a 28-step 1024-px grid (`bench/gpu_inference.py`'s denoising loop).
`--json FILE` writes the figures.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flux_step as fs  # noqa: E402
import step_setup as st  # noqa: E402
from gpu_inference import build as build_denoiser  # noqa: E402
from gpu_inference import denoise, sync  # noqa: E402

from pm_lightning.scaling import memory_formulas as mf  # noqa: E402
from pm_lightning.scaling import model_shapes as ms


def plan_gib(module, setup: st.StepSetup, quant: str = "none") -> float:
    """The memory plan's figure for this step on one GPU: what the bench allocates (no VAE, buckets, context)."""
    shape = ms.shape_of(module.transformer)
    work = mf.Workload(
        tokens=setup.image_tokens + setup.text_tokens,
        text_tokens=setup.text_tokens,
        batch=setup.batch,
        align_layers=len(module.align_layers) if setup.align else 0,
        quant=quant,
    )
    parts = mf.components(shape, work, mf.STRATEGIES["ddp"], gpus=1)
    for key in ("comm buffers", "CUDA context + slack", "VAE (bf16)", "text encoders (bf16)"):
        parts.pop(key)
    return sum(parts.values()) / mf.GiB


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def fsdp2_step(setup: st.StepSetup, steps: int, warmup: int) -> dict:
    """The same step with the transformer under FSDP2 (`shard_flux`, every block + root) on a one-rank mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from pm_lightning.training.strategies import shard_flux

    cuda = setup.device.startswith("cuda")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    try:
        module = st.build_module(setup, setup.device)
        units = shard_flux(module.transformer, init_device_mesh("cuda" if cuda else "cpu", (1,)))
        out = {"units": units, **timed_steps(module, setup, steps, warmup)}
        del module
        return out
    finally:
        dist.destroy_process_group()


def default_quant(device: str) -> str:
    """fp8 where the card has fp8 tensor cores (Ada / Hopper and newer, compute capability >= 8.9), else int8."""
    if device.startswith("cuda") and torch.cuda.get_device_capability(device) >= (8, 9):
        return "fp8"
    return "int8"


def quantized_module(setup: st.StepSetup, mode: str):
    """`st.build_module` with the base quantized before the adapters are added, as `configure_model` does."""
    from diffusers import FluxTransformer2DModel
    from torch import nn

    from pm_lightning.models.quantize import quantize_base

    module = st.build_module(setup, "meta")  # the Stage1Module and its settings; its transformer is replaced
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(setup.transformer_config())
    nn.Module.to(transformer, setup.dtype)
    transformer.to_empty(device=setup.device)
    st.init_weights_(transformer, setup.seed)
    transformer.requires_grad_(False)
    quantize_base(transformer, mode)
    module.add_stage_adapters(transformer)
    torch.manual_seed(setup.seed)
    with torch.no_grad():  # B off zero, as st.init_weights_ does: the alignment term is non-zero
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.uniform_(-1e-2 / p.shape[-1] ** 0.5, 1e-2 / p.shape[-1] ** 0.5)
    transformer.enable_gradient_checkpointing()
    module.backbone = st.RandomBackbone(transformer, setup.text_tokens, setup.seed)
    return module.to(setup.device).train()


def quantized_step(setup: st.StepSetup, steps: int, warmup: int, mode: str) -> dict:
    """The stage-1 step over a quantized frozen base: seconds per step, peak memory, the plan's figure, the loss."""
    module = quantized_module(setup, mode)
    out = {"mode": mode, **timed_steps(module, setup, steps, warmup), "plan_gib": plan_gib(module, setup, mode)}
    del module
    return out


def timed_steps(module, setup: st.StepSetup, steps: int, warmup: int) -> dict:
    """Median seconds per training step after `warmup` steps, the last loss, and the peak memory on CUDA."""
    cuda = setup.device.startswith("cuda")
    optimizer = st.make_optimizer(module)
    batch = st.make_batch(setup, setup.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        fs._sync(setup.device)
        t = time.perf_counter()
        loss = st.train_step(module, optimizer, batch, setup, setup.device)
        fs._sync(setup.device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    out = {"sec_per_step": sorted(times)[len(times) // 2], "loss": float(loss)}
    if cuda:
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del optimizer
    return out


def generation_s(setup: st.StepSetup, steps: int) -> float:
    """Seconds of one `steps`-step denoising loop over the grid (median of 2, after a warm-up)."""
    scale = "full" if setup.scale == "full" else "small"
    transformer = build_denoiser(scale, setup.device, setup.dtype, rank=setup.rank, domains=setup.domains)
    denoise(transformer, 1, setup.image_tokens, setup.text_tokens)  # warm-up
    times = []
    for _ in range(2):
        sync(setup.device)
        t = time.perf_counter()
        denoise(transformer, steps, setup.image_tokens, setup.text_tokens)
        sync(setup.device)
        times.append(time.perf_counter() - t)
    return min(times)


CUDA12_SETUP = (
    "make setup TORCH='torch==2.14.1 torchvision==0.29.1 --extra-index-url https://download.pytorch.org/whl/cu128'"
)


def cuda_problem() -> str | None:
    """Why CUDA cannot run the full check here (None when it can)."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU build"
    try:
        torch.cuda.init()  # raises with the driver's own reason (too old for this build, no device, ...)
    except Exception as err:  # noqa: BLE001 - any failure to start CUDA is the answer
        return f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) cannot start CUDA: {err}"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no GPU"
    return None


def refuse_without_cuda(device: str | None) -> None:
    """Stop before the full FLUX.1-dev step runs anywhere but a CUDA GPU (on CPU it would run the 12B model in fp32
    for hours and print CPU figures under the GPU check's name)."""
    problem = f"--device {device} is not a CUDA device" if device and not device.startswith("cuda") else None
    if problem := problem or cuda_problem():
        raise SystemExit(
            f"gpu_check: CUDA is not usable: {problem}. The full check needs one CUDA GPU; nothing was run. "
            "`bash bench/gpu_check.sh --tiny` runs the scaled-down shape on CPU. The pinned torch is a CUDA 13 "
            f"build (NVIDIA driver >= 580); with an older driver rebuild the venv with a CUDA 12 torch: {CUDA12_SETUP}"
        )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="the scaled-down shape (CPU, seconds)")
    p.add_argument("--device", default=None, help="default: cuda (refused without it), cpu with --tiny")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 10 GPU, 2 tiny)")
    p.add_argument(
        "--quant", default="auto", choices=("auto", "none", "int8", "fp8", "nf4"), help="quantized-base step"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument(
        "--no-cudnn-attention",
        action="store_true",
        help="turn off cuDNN's fused attention (torch.backends.cuda.enable_cudnn_sdp(False)): under torch 2.11.0+cu130 "
        "on an H200 its backward failed (docs/BENCHMARKS.md, 'GPU check')",
    )
    args = p.parse_args(argv)
    if not args.tiny:
        refuse_without_cuda(args.device)
    if args.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)  # SDPA picks flash / memory-efficient attention instead
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps, warmup = args.steps or (2 if args.tiny else 10), 1 if args.tiny else 3
    flags = ["--device", device, "--scale", "small" if args.tiny else "full"]
    flags += ["--resolution", "128", "--text-tokens", "16", "--rank", "8"] if args.tiny else ["--rank", "64"]
    _, setup = fs.parse_args(flags)
    print(f"gpu_check: {fs.describe(setup, steps, warmup)}", flush=True)

    result = fs.run(setup, steps, warmup)
    module = st.build_module(setup, "meta")
    out = {
        "device": result["device"],
        "sec_per_step": result["sec_per_step"],
        "mfu": result["mfu"],
        "peak_gib": result["peak_gib"],
        "plan_gib": plan_gib(module, setup),
        "model_flops": result["model_flops"],
    }
    del module
    free(device)
    mfu = f"{out['mfu']:.1%}" if out["mfu"] is not None else "n/a (no bf16 peak known for this device)"
    print(f"stage-1 step: {out['sec_per_step']:.3f} s, MFU {mfu} ({out['model_flops']:.3g} model FLOPs)")
    what = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "process max RSS, CPU"
    print(f"peak memory: {out['peak_gib']:.2f} GiB measured ({what}) vs {out['plan_gib']:.2f} GiB in the memory plan")

    fsdp = fsdp2_step(setup, steps, warmup)
    free(device)
    out["fsdp2"] = fsdp
    peak = f", peak {fsdp['peak_gib']:.2f} GiB" if "peak_gib" in fsdp else ""
    print(f"FSDP2, one GPU ({fsdp['units']} block units + root): {fsdp['sec_per_step']:.3f} s per step{peak}")

    mode = default_quant(device) if args.quant == "auto" else args.quant
    if mode != "none" and importlib.util.find_spec("torchao") is None:
        print("quantized base: skipped (torchao is not installed: pip install 'pm_lightning[quant]')")
    elif mode != "none":
        quant = quantized_step(setup, steps, warmup, mode)
        free(device)
        out["quantized"] = quant
        peak = f", peak {quant['peak_gib']:.2f} GiB measured" if "peak_gib" in quant else ""
        print(
            f"quantized base ({mode}, torchao weight-only): {quant['sec_per_step']:.3f} s per step{peak} vs "
            f"{quant['plan_gib']:.2f} GiB in the memory plan"
        )

    gen_steps = 3 if args.tiny else 28
    out["generation_s"] = generation_s(setup, gen_steps)
    print(f"{gen_steps}-step {setup.resolution}-px grid generation (transformer loop): {out['generation_s']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
