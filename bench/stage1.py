"""Stage-1 step time: Stage1Module under Lightning vs a plain PyTorch loop doing the same work.

    .venv/bin/python bench/stage1.py [--steps 30] [--warmup 5] [--batch 8] [--resolution 192] [--write-docs]

Each mode runs in its own subprocess (so peak RSS is per mode), twice, interleaved
(plain, lightning, plain, lightning); the figure per mode is the median step time over both runs.
Same module, same batch, same noise (seeded per step), same optimizer (CAME) and gradient clipping.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import _paths  # noqa: F401 - bench/ is on sys.path as a script; this puts the repository there too
from docs_section import write_section


def make_module(base: str, batch: int, resolution: int):
    """A configured Stage1Module (masked rank 16 + alignment, as experiments/tiny.yaml) and one fixed batch."""
    import torch

    from pm_lightning.models.adapter_config import AdapterConfig
    from pm_lightning.models.alignment import AlignmentConfig
    from pm_lightning.training.optim import OptimizerConfig
    from pm_lightning.training.stage1 import Stage1Module

    domains = ["lego", "painting", "fabric_toy", "cake", "sketch", "garden", "pixel_art"]
    module = Stage1Module(
        base=base,
        domains=domains,
        adapter=AdapterConfig(kind="masked", rank=16),
        alignment=AlignmentConfig(enabled=True),
        optimizer=OptimizerConfig(name="came", lr=1e-3),
    )
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    fixed = {
        "pixels": torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1,
        "caption": ["a lego tower of eight red bricks on a green baseplate"] * batch,
        "domain": torch.arange(batch) % len(domains),
        "key": [f"k{i}" for i in range(batch)],
    }
    return module, fixed


def run_plain(module, batch: dict, steps: int) -> list[float]:
    """The same work as Lightning's automatic optimisation, by hand."""
    import torch

    from pm_lightning.training.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(module.trainable_parameters(), module.optim_cfg)
    scheduler = build_scheduler(optimizer, module.optim_cfg)
    module.train()
    times = []
    for step in range(steps):
        start = time.perf_counter()
        terms = module.losses(batch, step)
        loss = terms["fm"].mean() + (terms["lambda"] * terms["align"]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        times.append(time.perf_counter() - start)
    return times


def run_lightning(module, batch: dict, steps: int) -> list[float]:
    """Trainer.fit over a loader that repeats the batch; per-step wall time from a callback."""
    import lightning as L
    import torch

    class Timer(L.Callback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_train_batch_start(self, *args):
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.times.append(time.perf_counter() - self.start)

    class Repeat(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield batch

    timer = Timer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[timer],
        num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(Repeat(), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return timer.times


def child(args) -> None:
    """Run one mode and print its step times and peak RSS as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module, batch = make_module(args.base, args.batch, args.resolution)
    times = (run_plain if args.mode == "plain" else run_lightning)(module, batch, args.steps + args.warmup)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": args.mode, "times": times[args.warmup :], "peak_mb": peak_mb}))


def spawn(args, mode: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--resolution",
        str(args.resolution),
        "--base",
        args.base,
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict, args) -> str:
    plain, light = (statistics.median(results[m]["times"]) for m in ("plain", "lightning"))
    rows = [
        f"Stage1Module step (masked LoRA rank 16 + alignment, CAME, clip 1.0), tiny Flux `{args.base}`, "
        f"batch {args.batch} x {args.resolution} px, {args.threads} thread(s), CPU; median of 2 x {args.steps} steps after {args.warmup} warm-up:",
        "",
        "| loop | step ms | samples/s | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for name, key, med in (("plain PyTorch", "plain", plain), ("Lightning Trainer", "lightning", light)):
        rows.append(f"| {name} | {med * 1e3:.1f} | {args.batch / med:.1f} | {max(results[key]['peak']):.0f} |")
    rows += ["", f"**Lightning / plain step time: {light / plain:.3f}x** (goal: at most 1.10x)"]
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--resolution", type=int, default=192)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--base", default="tiny")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--child", choices=["plain", "lightning"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.mode = args.child
        return child(args)
    results = {"plain": {"times": [], "peak": []}, "lightning": {"times": [], "peak": []}}
    for _ in range(2):
        for mode in ("plain", "lightning"):
            r = spawn(args, mode)
            results[mode]["times"] += r["times"]
            results[mode]["peak"].append(r["peak_mb"])
    text = table(results, args)
    print(text)
    if args.write_docs:
        write_section(
            f"## Stage 1 loop\n\nCommand: `.venv/bin/python bench/stage1.py --write-docs` (part of `make bench`).\n\n{text}\n"
        )


if __name__ == "__main__":
    main()
