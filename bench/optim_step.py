"""Optimizer step / forward+backward (per-tensor vs grouped), and compiled blocks vs eager (compile time, steady step).

    .venv/bin/python bench/optim_step.py [--steps 5] [--threads 1] [--no-compile] [--no-fsdp2] [--only-fsdp2]
                                         [--write-docs]

The real stage-1 step (`Stage1Module` with masked LoRA + alignment, gradient checkpointing on; bench/step_setup.py's
`RandomBackbone` stands in for the VAE and text encoders) on the tiny Flux (experiments/tiny.yaml's shape) and on the
full-depth narrow model (FLUX.1-dev's 19 double + 38 single blocks at the tiny width: FLUX.1-dev's count of LoRA
tensors, CPU-sized). One process: the four optimizers (CAME and AdamW, `optimizer.implementation` reference and
grouped) take turns on the same module, each step timed apart from the forward+backward before it. Compiled blocks:
a fresh module with `models/compile_blocks.py` (inductor), first step (trace + compile) then the median steady step,
next to the eager module's. Under FSDP2 (bench/optim_fsdp2.py): the same split on 2 gloo processes, CAME per tensor
(`ShardedCAME`) vs grouped on the local shards (`ShardedGroupedCAME`), AdamW per tensor vs foreach on DTensors; its
own section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import _paths  # noqa: F401 - bench/ is on sys.path as a script; this puts the repository there too
import torch
from docs_section import write_section
from optim_fsdp2 import WORLD, fsdp2_split
from step_setup import StepSetup, build_module, make_batch, train_step
from torch._dynamo.utils import counters

from pm_lightning.models.adapters import adapter_parameters  # noqa: E402
from pm_lightning.models.compile_blocks import compile_blocks  # noqa: E402
from pm_lightning.training.optim import OptimizerConfig, build_optimizer  # noqa: E402

SECTION = "## Optimizer step and compiled blocks"
FSDP2_SECTION = "## Optimizer step under FSDP2"
COMMAND = ".venv/bin/python bench/optim_step.py --write-docs"
SETUPS = {  # CPU, fp32, as the tiny runs train
    "tiny Flux (2 double + 4 single blocks), 192 px, batch 8": StepSetup(
        scale="small", device="cpu", precision="32", resolution=192, text_tokens=32, rank=16, domains=7, batch=8
    ),
    "full-depth narrow (19 double + 38 single blocks, width 128), 128 px, batch 1": StepSetup(
        scale="narrow", device="cpu", precision="32", resolution=128, text_tokens=32, rank=16, domains=21, batch=1
    ),
}
OPTIMIZERS = [(name, impl) for name in ("came", "adamw") for impl in ("reference", "grouped")]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def optimizer_split(setup: StepSetup, steps: int) -> dict:
    """Median forward+backward and optimizer-step seconds of each optimizer, taking turns on one module."""
    module = build_module(setup, "cpu")
    batch = make_batch(setup, "cpu")
    params = adapter_parameters(module.transformer)
    opts = {key: build_optimizer(params, OptimizerConfig(name=key[0], implementation=key[1])) for key in OPTIMIZERS}
    fwd_bwd, step = [], {key: [] for key in OPTIMIZERS}
    for i in range(steps + 1):  # the first round builds the optimizer states: not counted
        for key, opt in opts.items():
            t = timed(lambda: train_step(module, None, batch, setup, "cpu"))  # forward + backward only
            s = timed(opt.step)
            opt.zero_grad(set_to_none=True)
            if i:
                fwd_bwd.append(t)
                step[key].append(s)
    return {
        "tensors": len(params),
        "fwd_bwd": statistics.median(fwd_bwd),
        "step": {key: statistics.median(v) for key, v in step.items()},
    }


def compile_split(setup: StepSetup, steps: int) -> dict:
    """First-step and median steady-step seconds, eager and with compiled blocks (grouped CAME)."""
    out = {}
    for mode in ("eager", "compiled"):
        module = build_module(setup, "cpu")
        if mode == "compiled":
            compile_blocks(module.transformer)
        opt = build_optimizer(adapter_parameters(module.transformer), OptimizerConfig())
        batch = make_batch(setup, "cpu")
        graphs = counters["stats"]["unique_graphs"]
        times = [timed(lambda m=module, o=opt, b=batch: train_step(m, o, b, setup, "cpu")) for _ in range(steps + 2)]
        graphs = counters["stats"]["unique_graphs"] - graphs  # dynamo graphs made: 0 when nothing compiled
        out[mode] = {"first": times[0], "steady": statistics.median(times[2:]), "graphs": graphs}
    return out


def ratio_table(caption: str, results: dict) -> str:
    """Per model and optimizer: the per-tensor and grouped step next to forward+backward, and the 10% goal."""
    rows = [
        caption,
        "",
        "| model | LoRA tensors | fwd+bwd s | optimizer | per-tensor step ms | grouped step ms | per-tensor / fwd+bwd "
        "| grouped / fwd+bwd | speed-up | goal |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, r in results.items():
        for name in ("came", "adamw"):
            ref, grp = r["step"][(name, "reference")], r["step"][(name, "grouped")]
            share = 100 * grp / r["fwd_bwd"]
            goal = "met" if share <= 10 else f"missed by {share - 10:.1f} points"
            classes = r.get("classes", {})
            kinds = f" ({classes[name + ' reference']} / {classes[name + ' grouped']})" if classes else ""
            rows.append(
                f"| {label} | {r['tensors']} | {r['fwd_bwd']:.3f} | {name}{kinds} | {ref * 1e3:.1f} | {grp * 1e3:.1f} | "
                f"{100 * ref / r['fwd_bwd']:.1f}% | {share:.1f}% | {ref / grp:.2f}x | {goal} |"
            )
    return "\n".join(rows)


def optimizer_table(results: dict, steps: int) -> str:
    return ratio_table(
        "Optimizer step time / forward+backward time (goal: at most 10%), CPU, 1 thread, fp32, masked LoRA rank 16 + "
        f"alignment, gradient checkpointing; median of {steps} steps per optimizer, taking turns on one module:",
        results,
    )


def fsdp2_table(results: dict, steps: int, threads: int) -> str:
    return ratio_table(
        f"Optimizer step time / forward+backward time under FSDP2 (goal: at most 10%), {WORLD} CPU processes (gloo, "
        f"{threads} thread each), fp32, masked LoRA rank 16 + alignment, gradient checkpointing, one FSDP2 unit per "
        f"block; per round one forward+backward, then each optimizer's step on its gradients; median of {steps} "
        "rounds, the slower rank's:",
        results,
    )


def compile_table(label: str, r: dict, steps: int) -> str:
    eager, comp = r["eager"], r["compiled"]
    return "\n".join(
        [
            f"Compiled blocks (`model.init_args.compile: true`, inductor) vs eager, {label}, CPU, 1 thread, grouped "
            f"CAME; first step (compile included), then the median of {steps} steady steps after one more:",
            "",
            "| mode | graphs compiled | first step s | steady step s |",
            "|---|---:|---:|---:|",
            f"| eager | {eager['graphs']} | {eager['first']:.2f} | {eager['steady']:.3f} |",
            f"| compiled blocks | {comp['graphs']} | {comp['first']:.2f} | {comp['steady']:.3f} |",
            "",
            f"**compiled / eager steady step: {comp['steady'] / eager['steady']:.3f}x**; compile cost "
            f"{comp['first'] - eager['first']:.0f} s",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-compile", action="store_true", help="leave the compiled-blocks measurement out")
    p.add_argument("--no-fsdp2", action="store_true", help="leave the FSDP2 (2-process) measurement out")
    p.add_argument("--only-fsdp2", action="store_true", help="measure (and write) the FSDP2 section only")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.only_fsdp2:
        text = optimizer_table({label: optimizer_split(s, args.steps) for label, s in SETUPS.items()}, args.steps)
        if not args.no_compile:
            label, setup = next(iter(SETUPS.items()))
            text += "\n\n" + compile_table(label, compile_split(setup, args.steps), args.steps)
        print(text)
        if args.write_docs:
            write_section(f"{SECTION}\n\nCommand: `{COMMAND}` (part of `make bench`).\n\n{text}\n")
    if args.no_fsdp2:
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = fsdp2_split(SETUPS, args.steps, args.threads, f"{tmp}/fsdp2.pt")
    text = fsdp2_table(results, args.steps, args.threads)
    print(text)
    if args.write_docs:
        write_section(
            f"{FSDP2_SECTION}\n\nCommand: `{COMMAND}` (part of `make bench`; this section alone: "
            f"`--only-fsdp2`).\n\n{text}\n"
        )


if __name__ == "__main__":
    main()
