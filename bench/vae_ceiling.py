"""Stage 2's ceiling for a VAE alone: the true middle frame through the VAE vs the cross-fade and the copy of f_i.

The samples, baselines and metrics are bench/insertion.py's (imported, not copied): for every interior frame
f_{i+1} of `--per-domain` split-seed-1 sequences per domain (never trained on), at the stage-2 cell size, the
ceiling row is decode(encode(f_{i+1})) through the given VAE (posterior mode, Flux's shift/scale, clamped and
rounded to 8 bits as stage 2's frames are), next to `Image.blend(f_i, f_{i+2}, 0.5)` and a copy of f_i. Metrics
vs the true f_{i+1}: pixel MSE, PSNR and tiny-CLIP cosine, per domain group. No stage-2 LoRA is needed, so a
candidate VAE folder (`python -m pm_lightning.tiny_base --vae-only --out DIR`) is measured without retraining.

`python bench/vae_ceiling.py [--vae DIR]` prints the tables and one verdict line per group; with the committed
VAE (`data/tiny-flux/vae`) the ceiling rows equal docs/STAGE2.md's "Insertion quality" ceiling rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from insertion import BASELINES, METHODS, baselines, collect, group_tables, score, stage_cell  # bench/ on sys.path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VAE = REPO / "data" / "tiny-flux" / "vae"
CEILING = METHODS[3]
# metric -> True when higher is better (PSNR, CLIP cosine) and False when lower is (MSE)
HIGHER_IS_BETTER = {"mse": False, "psnr": True, "clip": True}


def shortfalls(scores: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """The (baseline, metric) pairs on which the ceiling's mean is not strictly better, as 'metric vs baseline'.

    An empty list: the VAE round trip of the true frame beats both baselines on every metric present."""
    ceiling = scores[CEILING]
    out = []
    for m in BASELINES:
        for key, higher in HIGHER_IS_BETTER.items():
            if key not in ceiling:
                continue
            a, b = ceiling[key].mean(), scores[m][key].mean()
            if not (a > b if higher else a < b):
                out.append(f"{key} vs {m}")
    return out


@torch.no_grad()
def round_trip(vae, images, cell: int, batch: int = 32) -> list:
    """decode(encode(frame)) per frame, exactly as stage 2 encodes its references and decodes its cells:
    the posterior mode in Flux's latent units, back to pixels clamped to [-1, 1], rounded to 8-bit RGB."""
    from pm_lightning.inference.reference_sampling import to_pil, to_tensor
    from pm_lightning.models.backbone import vae_encode

    cfg = vae.config
    out = []
    for lo in range(0, len(images), batch):
        x = torch.stack([to_tensor(im, cell) for im in images[lo : lo + batch]])  # (B, 3, cell, cell)
        latents = vae_encode(vae, x)  # (B, C, cell/f, cell/f), Flux units
        z = latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        out += [to_pil(y) for y in vae.decode(z).sample.clamp(-1, 1)]
    return out


@torch.no_grad()
def _tokens(side: int) -> torch.Tensor:
    """(side^2, 3) Flux image position ids (0, row, col) of a side x side token grid."""
    r = torch.arange(side, dtype=torch.float32)
    return torch.stack([torch.zeros(side * side), r.repeat_interleave(side), r.repeat(side)], dim=1)


def token_price(factor: int, latent_channels: int, sizes=(64, 128, 192), batch: int = 4, reps: int = 3) -> dict:
    """The transformer's price of a VAE: seconds of one forward + backward of the committed tiny transformer's
    architecture (random weights, `in_channels` = 4 x the VAE's latent channels) on a batch of square canvases of
    each size, at the token count this VAE's factor gives (side / factor / 2 tokens per side, 2x2 packing) and at
    the committed VAE's (factor 8), measured side by side: {size: {"tokens", "tokens_8x", "s", "s_8x", "ratio"}}."""
    from diffusers import FluxTransformer2DModel

    cfg = dict(FluxTransformer2DModel.load_config(str(REPO / "data" / "tiny-flux" / "transformer")))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}

    def step_seconds(in_channels: int, side: int) -> float:
        torch.manual_seed(0)
        tf = FluxTransformer2DModel(**{**cfg, "in_channels": in_channels, "out_channels": None})
        x = torch.randn(batch, side * side, in_channels)
        txt = torch.randn(batch, 32, cfg["joint_attention_dim"])
        kw = dict(pooled_projections=torch.randn(batch, cfg["pooled_projection_dim"]), timestep=torch.rand(batch))
        kw.update(img_ids=_tokens(side), txt_ids=torch.zeros(32, 3), encoder_hidden_states=txt, return_dict=False)
        if cfg.get("guidance_embeds"):
            kw["guidance"] = torch.ones(batch)
        times = []
        for _ in range(reps + 1):  # the first call warms up
            t0 = time.perf_counter()
            tf(hidden_states=x, **kw)[0].mean().backward()
            times.append(time.perf_counter() - t0)
        return float(np.median(times[1:]))

    out = {}
    for size in sizes:
        side, side8 = size // factor // 2, size // 16
        s, s8 = step_seconds(4 * latent_channels, side), step_seconds(cfg["in_channels"], side8)
        out[size] = {"tokens": side * side, "tokens_8x": side8 * side8, "s": round(s, 4), "s_8x": round(s8, 4)}
        out[size]["ratio"] = round(s / s8, 2)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae", type=Path, default=DEFAULT_VAE, help="an AutoencoderKL folder (config.json + weights)")
    p.add_argument("--per-domain", type=int, default=8, help="sequences per domain (split seed 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the group means here")
    p.add_argument("--price", action="store_true", help="also time the transformer at this VAE's token counts")
    p.add_argument("--cell", type=int, default=None, help="frame size in px (default: the stage-2 config's cell)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """{group: {method: {metric: mean}}} plus "shortfalls" per group; prints markdown tables."""
    torch.set_num_threads(1)
    from diffusers import AutoencoderKL

    from pm_lightning.data.synthetic_corpus import HELDOUT_DOMAINS, TRAIN_DOMAINS
    from pm_lightning.models.encoders import Encoders

    t0 = time.perf_counter()
    cell = args.cell or stage_cell()
    domains = {"training domains": list(TRAIN_DOMAINS), "held-out domains": list(HELDOUT_DOMAINS)}
    samples = collect(domains, args.per_domain, cell)
    vae = AutoencoderKL.from_pretrained(str(args.vae)).eval()
    enc = Encoders.load(clip="tiny", dino="tiny")
    for s, t in zip(samples, round_trip(vae, [s.truth for s in samples], cell)):
        s.candidates.update(baselines(s.a, s.b))
        s.candidates[CEILING] = t

    params = sum(p.numel() for p in vae.parameters())
    c = vae.config
    factor = 2 ** (len(c.block_out_channels) - 1)
    print(
        f"VAE {args.vae}: {params:,} parameters, blocks {tuple(c.block_out_channels)} = {factor}x, "
        f"{c.latent_channels} latent channels; {cell} px frames, split seed 1, {args.per_domain} sequences per domain"
    )
    result = {"vae": str(args.vae), "params": params, "latent_channels": c.latent_channels, "factor": factor}
    for group in domains:
        sub = [s for s in samples if s.group == group]
        sc = score(sub, enc)
        per_method, _ = group_tables(sub, sc)
        miss = shortfalls(sc)
        line = "clears both baselines on every metric" if not miss else "does not beat: " + ", ".join(miss)
        print(f"\n### {group} ({len(sub)} insertions)\n\n{per_method}\n\nCeiling {line}.")
        result[group] = {m: {k: float(v.mean()) for k, v in res.items()} for m, res in sc.items()}
        result[group]["shortfalls"] = miss
    if args.price:
        result["price"] = token_price(factor, c.latent_channels)
        rows = [f"| {size} px | {r['tokens']} | {r['tokens_8x']} | {r['s']} | {r['s_8x']} | {r['ratio']}x |"
                for size, r in result["price"].items()]  # fmt: skip
        head = "| canvas | tokens | tokens (8x) | fwd+bwd s | fwd+bwd s (8x) | ratio |\n|---|---:|---:|---:|---:|---:|"
        print(f"\n### The transformer's price (batch 4, one thread)\n\n{head}\n" + "\n".join(rows))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\n{result['seconds']} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
