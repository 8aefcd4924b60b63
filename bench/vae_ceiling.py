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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae", type=Path, default=DEFAULT_VAE, help="an AutoencoderKL folder (config.json + weights)")
    p.add_argument("--per-domain", type=int, default=8, help="sequences per domain (split seed 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the group means here")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """{group: {method: {metric: mean}}} plus "shortfalls" per group; prints markdown tables."""
    torch.set_num_threads(1)
    from diffusers import AutoencoderKL

    from pm_lightning.data.synthetic_corpus import HELDOUT_DOMAINS, TRAIN_DOMAINS
    from pm_lightning.models.encoders import Encoders

    t0 = time.perf_counter()
    cell = stage_cell()
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
