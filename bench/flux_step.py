"""FLUX.1-dev stage-1 training step: seconds per step, peak memory and MFU, random weights, no download.

    .venv/bin/python bench/flux_step.py --write-docs           # GPU: the full FLUX.1-dev step
    .venv/bin/python bench/flux_step.py                         # CPU: a scaled-down config, same code path
    .venv/bin/python bench/flux_step.py --flops-only --scale full   # count the full step's FLOPs (meta device)

The step is the real one: `Stage1Module.training_step` (flow matching + representation alignment with
the early-stopping teacher, masked LoRA routed per sample), then backward and the module's own
optimizer (CAME). Only the VAE and text encoders are replaced by `RandomBackbone`, which hands out
random latents and text embeddings of the right shapes. The transformer is built on the meta device,
materialised with `to_empty` and initialised in place, so a 12B model never touches host memory.
FLOPs are counted with FlopCounterMode on the meta device, twice: with gradient checkpointing
(executed FLOPs -> HFU) and without (model FLOPs -> MFU). The step and its setup: bench/step_setup.py; this script
measures and reports it.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time

import _paths  # noqa: F401 - bench/ is on sys.path as a script; this puts the repository there too
import torch
from docs_section import BENCH_MD, write_section
from step_setup import (
    PX_PER_TOKEN,
    StepSetup,
    build_module,
    count_flops,
    make_batch,
    make_optimizer,
    train_step,
)

from pm_lightning.models.adapter_config import KINDS  # noqa: E402
from pm_lightning.models.adapters import adapter_parameters  # noqa: E402
from pm_lightning.models.variants import VARIANTS  # noqa: E402

SECTION = "## FLUX.1-dev step"
GPU_COMMAND = ".venv/bin/python bench/flux_step.py --write-docs"

# Dense (no 2:4 sparsity) bf16 tensor-core peaks: half of NVIDIA's datasheet figures, which are quoted with
# sparsity. nvidia.com/en-us/data-center/h100/: H100 SXM 1,979, H100 NVL 1,671, H100 PCIe 1,513 TFLOPS;
# nvidia.com/en-us/data-center/h200/: H200 SXM 1,979, H200 NVL 1,671 TFLOPS (the vendor's figures, not measured here).
PEAK_BF16_DENSE = (  # first substring of torch.cuda.get_device_name() that matches wins: specific names first
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("A6000", 155e12),
)
FULL_MODEL_FLOPS, FULL_EXECUTED_FLOPS = 2.081e14, 2.843e14  # flux-dev defaults, from --flops-only --scale full


# ---------------------------------------------------------------------------------------------- measuring


def peak_flops(device_name: str, override: float | None) -> float | None:
    """Peak dense bf16 FLOP/s of the device (table by name), or the --peak-flops override."""
    if override:
        return override
    return next((v for key, v in PEAK_BF16_DENSE if key in device_name), None)


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(setup: StepSetup, steps: int, warmup: int) -> dict:
    """Build, run warmup + steps real training steps; seconds per step (median), peak memory, loss."""
    device, cuda = setup.device, torch.device(setup.device).type == "cuda"
    t0 = time.perf_counter()
    module = build_module(setup, device)
    optimizer = make_optimizer(module)
    batch = make_batch(setup, device)
    _sync(device)
    build_s = time.perf_counter() - t0
    if cuda:
        weights_gib = torch.cuda.memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        loss = train_step(module, optimizer, batch, setup, device)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
        losses.append(float(loss))
    out = {
        "sec_per_step": statistics.median(times),
        "build_s": build_s,
        "loss": losses[-1],
        "trainable": sum(p.numel() for p in adapter_parameters(module.transformer)),
        "base": sum(p.numel() for p in module.transformer.parameters() if not p.requires_grad),
        "align_layers": module.align_layers if setup.align else [],
    }
    if cuda:
        out.update(
            weights_gib=weights_gib,
            peak_gib=torch.cuda.max_memory_allocated(device) / 2**30,
            reserved_gib=torch.cuda.max_memory_reserved(device) / 2**30,
        )
    else:
        out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process
    return out


def run(setup: StepSetup, steps: int, warmup: int, peak_override: float | None = None) -> dict:
    """Everything the table reports: measured step + counted FLOPs + MFU / HFU."""
    result = measure(setup, steps, warmup)
    result["model_flops"] = count_flops(setup, checkpointing=False)
    result["executed_flops"] = count_flops(setup, checkpointing=True)
    result["device"] = device_name(setup.device)
    peak = peak_flops(result["device"], peak_override)
    result["peak_flops"] = peak
    result["achieved_flops"] = result["model_flops"] / result["sec_per_step"]
    result["mfu"] = result["achieved_flops"] / peak if peak else None
    result["hfu"] = result["executed_flops"] / result["sec_per_step"] / peak if peak else None
    return result


# ---------------------------------------------------------------------------------------------- report


def describe(setup: StepSetup, steps: int = 0, warmup: int = 0) -> str:
    size = "full size" if setup.scale == "full" else "scaled-down config (2 double + 4 single blocks, width 128)"
    mode = f"{torch.device(setup.device).type.upper()}, {size}"
    cfg = setup.transformer_config()
    blocks = f"{cfg['num_layers']} double + {cfg['num_single_layers']} single blocks, width {cfg['num_attention_heads'] * cfg['attention_head_dim']}"
    align = "representation alignment (early-stopping teacher)" if setup.align else "no alignment"
    return (
        f"Mode: {mode}. {setup.variant} transformer ({blocks}), random weights, {setup.precision}; "
        f"{setup.kind} LoRA rank {setup.rank}, {setup.domains} domains; {align}; "
        f"{setup.resolution} px grid = {setup.resolution // PX_PER_TOKEN}x{setup.resolution // PX_PER_TOKEN} = "
        f"{setup.image_tokens} image tokens + {setup.text_tokens} text tokens, batch {setup.batch}; "
        f"gradient checkpointing on; CAME."
        + (f" Median of {steps} steps after {warmup} warm-up steps." if steps else "")
    )


def table(setup: StepSetup, r: dict) -> str:
    cuda = torch.device(setup.device).type == "cuda"
    pct = lambda x: f"{100 * x:.1f}%" if x is not None else "- (no peak: pass --peak-flops)"  # noqa: E731
    rows = [
        ("device", r["device"]),
        ("seconds per step (median)", f"{r['sec_per_step']:.4f}"),
        ("peak memory, GiB", f"{r['peak_gib']:.2f}" + (" (max_memory_allocated)" if cuda else " (process max RSS)")),
    ]
    if cuda:
        rows += [
            ("weights + adapters after build, GiB", f"{r['weights_gib']:.2f}"),
            ("peak reserved, GiB", f"{r['reserved_gib']:.2f}"),
        ]
    rows += [
        ("base / trainable parameters", f"{r['base']:,} / {r['trainable']:,}"),
        ("alignment layers", str(r["align_layers"]) if r["align_layers"] else "-"),
        ("model FLOPs per step (no recompute)", f"{r['model_flops']:.4g}"),
        ("executed FLOPs per step (with recompute)", f"{r['executed_flops']:.4g}"),
        ("achieved model FLOP/s", f"{r['achieved_flops']:.4g}"),
        ("peak bf16 dense FLOP/s", f"{r['peak_flops']:.4g}" if r["peak_flops"] else "-"),
        ("MFU (model FLOPs)", pct(r["mfu"])),
        ("HFU (executed FLOPs)", pct(r["hfu"])),
        ("loss (last step)", f"{r['loss']:.4f}"),
        ("build time, s", f"{r['build_s']:.1f}"),
    ]
    return "\n".join(["| quantity | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in rows])


def oom_message(setup: StepSetup, err: BaseException) -> str:
    dev = setup.device
    total = torch.cuda.get_device_properties(dev).total_memory / 2**30
    peak = torch.cuda.max_memory_allocated(dev) / 2**30
    return (
        f"OUT OF MEMORY on {device_name(dev)} ({total:.0f} GiB): the {setup.variant} stage-1 step "
        f"({setup.kind} rank {setup.rank}, {setup.image_tokens}+{setup.text_tokens} tokens, batch {setup.batch}, "
        f"alignment {'on' if setup.align else 'off'}) does not fit; peak allocated before the failure {peak:.1f} GiB.\n"
        f"Try --resolution 512, --no-align or --kind lora; estimate with "
        f"`python -m pm_lightning.memory_plan --gpus 1 --gpu-gb {total:.0f}`.\n"
        f"torch: {str(err).splitlines()[0]}"
    )


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, StepSetup]:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10 if cuda else 3)
    ap.add_argument("--warmup", type=int, default=3 if cuda else 1)
    ap.add_argument("--variant", default="flux-dev", choices=[k for k, v in VARIANTS.items() if v.transformer_config])
    ap.add_argument("--scale", choices=("full", "small"), help="default: full on a GPU, small on CPU")
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--precision", choices=("bf16-mixed", "32"), help="default: bf16-mixed on a GPU, 32 on CPU")
    ap.add_argument("--resolution", type=int, help="grid px per side (default 1024 full, 256 small)")
    ap.add_argument("--text-tokens", type=int, help="default 512 full, 32 small")
    ap.add_argument("--kind", default="masked", choices=KINDS)
    ap.add_argument("--rank", type=int, help="default 64 full, 16 small")
    ap.add_argument("--domains", type=int, default=21)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--no-align", action="store_true")
    ap.add_argument("--peak-flops", type=float, help="peak dense bf16 FLOP/s (overrides the table by device name)")
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (1: steadier on a shared machine)")
    ap.add_argument("--flops-only", action="store_true", help="only count FLOPs on the meta device (no run)")
    ap.add_argument(
        "--write-docs", action="store_true", help="rewrite the 'FLUX.1-dev step' section of docs/BENCHMARKS.md"
    )
    args = ap.parse_args(argv)
    full = (args.scale or ("full" if torch.device(args.device).type == "cuda" else "small")) == "full"
    setup = StepSetup(
        scale="full" if full else "small",
        variant=args.variant,
        device=args.device,
        precision=args.precision or ("bf16-mixed" if torch.device(args.device).type == "cuda" else "32"),
        resolution=args.resolution or (1024 if full else 256),
        text_tokens=args.text_tokens or (512 if full else 32),
        kind=args.kind,
        rank=args.rank or (64 if full else 16),
        domains=args.domains,
        batch=args.batch,
        align=not args.no_align,
    )
    return args, setup


def main(argv: list[str] | None = None) -> dict:
    args, setup = parse_args(argv)
    if torch.device(setup.device).type == "cpu":
        torch.set_num_threads(args.threads)
    print(
        f"mode: {'GPU full-size' if setup.scale == 'full' else 'scaled-down'} ({setup.scale}) on {device_name(setup.device)}, "
        f"{setup.precision}",
        flush=True,
    )
    if args.flops_only:
        result = {"model_flops": count_flops(setup, False), "executed_flops": count_flops(setup, True)}
        print(
            f"{describe(setup)}\nmodel FLOPs per step (no recompute): {result['model_flops']:.4g}\n"
            f"executed FLOPs per step (with recompute): {result['executed_flops']:.4g}"
        )
        return result
    try:
        result = run(setup, args.steps, args.warmup, args.peak_flops)
    except torch.OutOfMemoryError as err:
        print(oom_message(setup, err), file=sys.stderr)
        raise SystemExit(2) from None
    setup_line = describe(setup, args.steps, args.warmup)
    body = table(setup, result)
    print(setup_line + "\n\n" + body)
    if args.write_docs:
        when = f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}"
        pending = (
            ""
            if setup.scale == "full"
            else "\n\nFull-size GPU figures: pending a run of the command above on a GPU. The full step's FLOPs, "
            "counted on the meta device (`bench/flux_step.py --flops-only --scale full`): "
            f"{FULL_MODEL_FLOPS:.3g} model / {FULL_EXECUTED_FLOPS:.3g} executed per step (docs/SCALING.md)."
        )
        write_section(
            f"{SECTION}\n\nCommand: `{GPU_COMMAND}` on a GPU (on CPU it runs the scaled-down config). "
            f"{when}.\n\n{setup_line}\n\n{body}{pending}\n"
        )
        print(f"wrote the '{SECTION[3:]}' section of {BENCH_MD}")
    result["setup"] = setup
    return result


if __name__ == "__main__":
    main()
