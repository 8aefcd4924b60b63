"""Model-core benchmark: masked vs plain LoRA, and a stage-1 step with vs without representation alignment.

Run: `make bench` or `.venv/bin/python bench/models.py` (about a minute on 2 CPU cores).
All variants run on the same random Flux transformer and batch, interleaved repeat by repeat
after a warm-up, and the median is reported; the "Model core" section of docs/BENCHMARKS.md is
rewritten with the table (other sections are left alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import FluxTransformer2DModel
from docs_section import BENCH_MD, write_section  # bench/ is on sys.path when run as a script

from pm_lightning.models import alignment as al
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_routing import use_domains
from pm_lightning.models.adapters import adapter_parameters, add_adapters
from pm_lightning.models.variants import TINY_FLUX_TRANSFORMER

SECTION = "## Model core"

BATCH, GRID, TEXT, RANK, DOMAINS = 4, 12, 32, 16, 4  # 12 x 12 image tokens = a 192 px grid


def build(kind: str) -> FluxTransformer2DModel:
    """The same random base (seed 0) with a rank-16 adapter of `kind`, B nudged off zero."""
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**TINY_FLUX_TRANSFORMER)  # 2 double + 4 single blocks, width 128.train()
    model.requires_grad_(False)
    add_adapters(model, AdapterConfig(kind=kind, rank=RANK, num_domains=DOMAINS))
    with torch.no_grad():
        for p in adapter_parameters(model):
            if not p.any():
                p.normal_(std=0.01)  # as after some training: the alignment term is then non-zero
    return model


def batch() -> dict:
    """Forward kwargs: x_t (B, 144, 64), text (B, 32, 64), per-sample t and domains."""
    g = torch.Generator().manual_seed(1)
    rows = torch.arange(GRID).repeat_interleave(GRID)
    cols = torch.arange(GRID).repeat(GRID)
    return dict(
        hidden_states=torch.randn(BATCH, GRID * GRID, 64, generator=g),  # (B, N, 64)
        encoder_hidden_states=torch.randn(BATCH, TEXT, 64, generator=g),  # (B, T, 64)
        pooled_projections=torch.randn(BATCH, 32, generator=g),  # (B, 32)
        timestep=torch.rand(BATCH, generator=g),  # (B,)
        guidance=torch.ones(BATCH),
        img_ids=torch.stack([torch.zeros_like(rows), rows, cols], -1).float(),  # (N, 3)
        txt_ids=torch.zeros(TEXT, 3),
        return_dict=False,
    )


def fwd_bwd(model, inputs, domains) -> Callable[[], None]:
    """One forward + backward of a flow-matching-like MSE loss."""
    target = torch.randn_like(inputs["hidden_states"])

    def run():
        with use_domains(model, domains):
            pred = model(**inputs)[0]  # (B, N, 64)
            ((pred - target) ** 2).mean().backward()
        model.zero_grad(set_to_none=True)

    return run


def train_step(model, inputs, domains, align: al.AlignmentConfig | None) -> Callable[[], None]:
    """A stage-1 step: [teacher pass], student forward (+capture), loss, backward, AdamW step."""
    target = torch.randn_like(inputs["hidden_states"])
    opt = torch.optim.AdamW(adapter_parameters(model), lr=1e-6)
    layers = al.resolve_layers(len(al.align_blocks(model))) if align else []

    def run():
        with use_domains(model, domains):
            if align:
                teacher = al.teacher_features(model, inputs, layers)
                with al.capture_features(model, layers) as student:
                    pred = model(**inputs)[0]
            else:
                pred = model(**inputs)[0]
            loss = ((pred - target) ** 2).mean(dim=(1, 2))  # (B,)
            if align:
                loss = loss + al.alignment_weight(inputs["timestep"], align) * al.alignment_loss(
                    student, teacher, align.gamma
                )
            loss.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def teacher_pass(model, inputs, domains, early: bool) -> Callable[[], None]:
    """The teacher alone: early-stopping hooks, or a full no-grad forward for reference."""
    layers = al.resolve_layers(len(al.align_blocks(model)))

    def run():
        if early:
            al.teacher_features(model, inputs, layers)
        else:
            with torch.no_grad():
                model(**inputs)

    return run


def measure(cases: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per case, cases interleaved within each repeat."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(warmup + repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def table(ms: dict[str, float]) -> str:
    rows = [
        ("masked vs plain LoRA, forward + backward", "lora fwd+bwd", "masked fwd+bwd", 1.10),
        ("stage-1 step with alignment vs without (masked)", "step", "step + align", 1.50),
        ("teacher pass: early stop vs full no-grad forward", "teacher full", "teacher early stop", None),
    ]
    out = ["| comparison | baseline ms | variant ms | ratio | goal |", "|---|---:|---:|---:|---|"]
    for label, base, var, goal in rows:
        ratio = ms[var] / ms[base]
        verdict = "-" if goal is None else f"<= {goal:.2f}x ({'met' if ratio <= goal else 'MISSED'})"
        out.append(f"| {label} | {ms[base]:.1f} | {ms[var]:.1f} | {ratio:.2f}x | {verdict} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a shared machine)")
    ap.add_argument("--no-docs", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    inputs, domains = batch(), torch.arange(BATCH) % DOMAINS  # per-sample domains
    lora, masked = build("lora"), build("masked")
    align = al.AlignmentConfig()
    cases = {
        "lora fwd+bwd": fwd_bwd(lora, inputs, domains),
        "masked fwd+bwd": fwd_bwd(masked, inputs, domains),
        "step": train_step(masked, inputs, domains, None),
        "step + align": train_step(masked, inputs, domains, align),
        "teacher full": teacher_pass(masked, inputs, domains, early=False),
        "teacher early stop": teacher_pass(masked, inputs, domains, early=True),
    }
    start = time.perf_counter()
    ms = measure(cases, args.repeats, args.warmup)
    layers = al.resolve_layers(len(al.align_blocks(masked)))
    setup = (
        f"Tiny random Flux transformer (2 double + 4 single blocks, hidden 128), batch {BATCH}, "
        f"{GRID * GRID} image tokens ({GRID}x{GRID}, a 192 px grid), {TEXT} text tokens, rank {RANK}, "
        f"{DOMAINS} domains chosen per sample; alignment layers {layers} (teacher stops after block {layers[-1]}); "
        f"fp32 CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}. "
        f"{os.cpu_count()} CPU cores (shared with other jobs), {time.strftime('%Y-%m-%d')}. "
        f"Median of {args.repeats} interleaved repeats after {args.warmup} warm-up rounds, {time.perf_counter() - start:.0f} s in all."
    )
    result = table(ms)
    print(result)
    if not args.no_docs:
        body = f"{SECTION}\n\nCommand: `make bench` or `.venv/bin/python bench/models.py`.\n\n{setup}\n\n{result}\n"
        write_section(body)
        print(f"wrote the '{SECTION[3:]}' section of {BENCH_MD}")


if __name__ == "__main__":
    main()
