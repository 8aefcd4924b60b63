"""Inference speed of a FLUX.1-dev-shaped transformer (random weights, no download): a 28-step 1024-px denoising
loop in bf16, with each step cache (diffusers hooks) and with / without `torch.compile`.

    .venv/bin/python bench/gpu_inference.py --write-docs        # GPU: FLUX.1-dev shape, 1024 px, 28 steps, bf16
    .venv/bin/python bench/gpu_inference.py                     # CPU: the scaled-down shape, same code path

The loop is FluxPipeline's denoising loop without the text encoders and the VAE (random text embeddings, random
start latents): transformer call inside `cache_context("cond")`, FlowMatchEulerDiscreteScheduler step. The masked
LoRA (rank 64, 21 domains) sits on the transformer as in stage-1 sampling, routed to one domain. The cached
loops' outputs are compared with the uncached one (relative L2 of the final latents): random weights make no
picture, so this is the only quality figure here; the tiny model's CLIP figures are in bench/inference.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import BENCH_MD, write_section  # noqa: E402
from step_setup import init_weights_  # noqa: E402

SECTION = "## FLUX.1-dev inference"


def build(scale: str, device: str, dtype: torch.dtype, rank: int, domains: int):
    from diffusers import FluxTransformer2DModel

    from pm_lightning.models.adapter_config import AdapterConfig
    from pm_lightning.models.adapter_routing import set_domains
    from pm_lightning.models.adapters import add_adapters
    from pm_lightning.models.backbone import meta_transformer
    from pm_lightning.models.variants import TINY_FLUX_TRANSFORMER

    cfg = {k: v for k, v in dict(meta_transformer("flux-dev").config).items() if not k.startswith("_")}
    cfg = dict(cfg, **TINY_FLUX_TRANSFORMER) if scale == "small" else cfg
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(cfg)
        torch.nn.Module.to(transformer, dtype)
        add_adapters(transformer, AdapterConfig(kind="masked", rank=rank, num_domains=domains))
    transformer.to_empty(device=device)
    init_weights_(transformer, 0)
    torch.nn.Module.to(transformer, dtype)
    set_domains(transformer, torch.tensor([0], device=device))
    return transformer.eval()


@torch.no_grad()
def denoise(transformer, steps: int, tokens: int, text_tokens: int, seed: int = 0) -> torch.Tensor:
    """FluxPipeline's loop on random inputs; returns the final packed latents (1, tokens, 64)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pm_lightning.models.backbone import image_ids

    device, dtype, cfg = transformer.device, transformer.dtype, transformer.config
    g = torch.Generator(device).manual_seed(seed)
    side = int(tokens**0.5) * 2
    latents = torch.randn(1, tokens, 64, generator=g, device=device, dtype=dtype)
    text = torch.randn(1, text_tokens, cfg.joint_attention_dim, generator=g, device=device, dtype=dtype)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=g, device=device, dtype=dtype)
    img_ids, txt_ids = image_ids(side, side, device=device), torch.zeros(text_tokens, 3, device=device)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps, device=device)
    guidance = torch.full((1,), 3.5, device=device, dtype=dtype)
    for t in scheduler.timesteps:
        with transformer.cache_context("cond"):
            v = transformer(
                hidden_states=latents,
                timestep=(t / 1000).expand(1).to(dtype),
                guidance=guidance,
                pooled_projections=pooled,
                encoder_hidden_states=text,
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    if hasattr(transformer, "_reset_stateful_cache"):  # what FluxPipeline does at the end of a call
        transformer._reset_stateful_cache()
    return latents


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    from pm_lightning.inference.cache import CacheConfig, transformer_cache

    gpu = args.device.startswith("cuda")
    scale, dtype = ("full", torch.bfloat16) if gpu else ("small", torch.float32)
    steps, tokens, text_tokens = (28, 4096, 512) if gpu else (8, 64, 16)
    transformer = build(scale, args.device, dtype, rank=64 if gpu else 8, domains=21)
    caches = {
        "none": None,
        "first-block 0.05": CacheConfig("first-block", 0.05),
        "first-block 0.10": CacheConfig("first-block", 0.10),
        "taylorseer 3/3": CacheConfig("taylorseer"),
    }
    rows, reference = [], None
    for compiled in (False,) if args.no_compile else (False, True):
        if compiled:
            transformer = torch.compile(transformer)  # the hooks below are enabled on the compiled module's original
        for name, cache in caches.items():
            target = getattr(transformer, "_orig_mod", transformer)
            with transformer_cache(target, cache):
                denoise(transformer, steps, tokens, text_tokens)  # warm-up (and compilation)
                times = []
                for _ in range(args.repeats):
                    sync(args.device)
                    start = time.perf_counter()
                    out = denoise(transformer, steps, tokens, text_tokens)
                    sync(args.device)
                    times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            if reference is None:
                reference, base = out.float(), seconds
            err = ((out.float() - reference).norm() / reference.norm()).item()
            rows.append(
                {"compile": compiled, "cache": name, "seconds": seconds, "speedup": base / seconds, "rel_l2": err}
            )
    device = torch.cuda.get_device_name() if gpu else "CPU"
    md = "\n".join(
        [
            "| torch.compile | cache | seconds per grid | speed-up | final-latent rel. L2 vs none |",
            "|---|---|---:|---:|---:|",
        ]
        + [
            f"| {'yes' if r['compile'] else 'no'} | {r['cache']} | {r['seconds']:.2f} | {r['speedup']:.2f}x | {r['rel_l2']:.3f} |"
            for r in rows
        ]
    )
    print(md)
    if args.write_docs:
        head = (
            f"{SECTION}\n\nCommand: `.venv/bin/python bench/gpu_inference.py --write-docs` on {device}, "
            f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}: {'FLUX.1-dev shape' if gpu else 'scaled-down shape'}, "
            f"{steps} steps, {tokens} image + {text_tokens} text tokens, {dtype}, masked LoRA, random weights.\n\n"
        )
        write_section(head + md + "\n")
        print(f"wrote the {SECTION[3:]} section of {BENCH_MD}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
