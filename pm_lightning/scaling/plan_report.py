"""The memory plan as the `memory_plan` command prints it: markdown tables and the JSON record."""

from __future__ import annotations

from pm_lightning.scaling.memory_formulas import (
    MEASURED_ON_GPU,
    QUANT_BYTES,
    QUANT_STRATEGIES,
    STRATEGIES,
    GiB,
    Workload,
)
from pm_lightning.scaling.model_shapes import ModelShape
from pm_lightning.scaling.plan_search import Plan, options, recommend


def format_options(shape: ModelShape, work: Workload, gpus: int, gpu_gib: float) -> str:
    """Markdown: total GiB per GPU of every strategy x quantization, with and without the text cache, and the
    recommendation."""
    opts = options(shape, work, gpus, gpu_gib)
    lines = [
        f"| {gpus} x {gpu_gib:g} GiB: total GiB per GPU | " + " | ".join(STRATEGIES) + " |",
        "|---" + "|---:" * len(STRATEGIES) + "|",
    ]
    for cache in (True, False):
        for quant in QUANT_BYTES:
            row = {o["strategy"]: o for o in opts if o["quant"] == quant and o["text_cache"] == cache}
            cells = [
                f"{row[s]['total'] / GiB:.1f}{'' if row[s]['fits'] else ' (no)'}" if s in row else "n/a"
                for s in STRATEGIES
            ]
            label = f"base {quant if quant != 'none' else 'bf16'}, {'text cache' if cache else 'T5 + CLIP on GPU'}"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    best = recommend(shape, work, gpus, gpu_gib)
    if best is None:
        lines.append(
            f"\nrecommended on {gpu_gib:g} GiB: nothing fits; use more GPUs, fewer tokens or a smaller adapter"
        )
    else:
        config = STRATEGIES[best["strategy"]].config
        quant = "" if best["quant"] == "none" else f", frozen base in {best['quant']} (quantize: {best['quant']})"
        if best["quant"] != "none" and not MEASURED_ON_GPU:
            quant += " [trains on CPU in the tests; its GPU memory is this plan's figure, not yet measured]"
        latents = "" if work.vae else ", latent cache (latent_cache_dir)"
        lines.append(
            f"\nrecommended on {gpu_gib:g} GiB: {best['strategy']} ({config}), text cache (text_cache_only: true)"
            f"{latents}{quant}: {best['total'] / GiB:.1f} GiB per GPU"
        )
    return "\n".join(lines)


def format_table(plans: list[Plan], shape: ModelShape, work: Workload) -> str:
    """A markdown table: one row per component, one column per strategy, GiB per GPU."""
    names = list(plans[0].components)
    head = (
        f"| GiB per GPU ({plans[0].gpus} x {plans[0].gpu_gib:g} GiB) | " + " | ".join(p.strategy for p in plans) + " |"
    )
    lines = [
        f"base {shape.base_params:,} params, adapters {shape.adapter_params:,} ({work.optimizer}); {work.tokens} tokens "
        f"({work.image_tokens} image + {work.text_tokens} text) x batch {work.batch} per GPU; "
        f"{work.align_layers} alignment layers; checkpointing {'on' if work.checkpointing else 'off'}; "
        f"text encoders {'on the GPU' if work.text_encoders else 'off (text cache)'}; "
        f"VAE {'on the GPU' if work.vae else 'off (latent cache)'}; base {work.quant}",
        "",
        head,
        "|---" + "|---:" * len(plans) + "|",
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{p.components[name] / GiB:.2f}" for p in plans) + " |")
    lines.append("| **total** | " + " | ".join(f"**{p.total / GiB:.2f}**" for p in plans) + " |")
    runs = lambda p: work.quant == "none" or p.strategy in QUANT_STRATEGIES  # noqa: E731
    fits = ["n/a (quantize: DDP only)" if not runs(p) else "yes" if p.fits else "NO" for p in plans]
    lines.append("| fits | " + " | ".join(fits) + " |")
    return "\n".join(lines)


def to_json(plans: list[Plan], shape: ModelShape, work: Workload) -> dict:
    return {
        "base_params": shape.base_params,
        "adapter_params": shape.adapter_params,
        "workload": {
            "tokens": work.tokens,
            "text_tokens": work.text_tokens,
            "batch": work.batch,
            "align_layers": work.align_layers,
            "checkpointing": work.checkpointing,
            "optimizer": work.optimizer,
            "text_encoders": work.text_encoders,
            "quant": work.quant,
            "vae": work.vae,
        },
        "plans": {
            p.strategy: {"gpus": p.gpus, "gpu_gib": p.gpu_gib, "bytes": p.components, "total": p.total, "fits": p.fits}
            for p in plans
        },
    }
