"""A style LoRA: a plain LoRA trained on single pictures of one domain, the kind of community LoRA MakeAnything
stacks on its procedural LoRA to reach an unseen domain (`generate --extra-lora FILE[:WEIGHT]`).

The pictures are a user's folder of captioned pictures (`data/image_folder.py`), or frames (mostly late,
finished-looking states) of synthetic sequences of the domain, each a whole picture at the grid resolution, captioned
with the sequence's caption. It is single-picture training: the LoRA learns how the domain looks, never a process.
Flow matching as in the stages (`training/flow.py`), attention Linears only (what style LoRAs usually adapt), written
in diffusers format like every export.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from pm_lightning.core.progress import progress_bar
from pm_lightning.data.synthetic_corpus import generate_sequence
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapters import adapter_parameters, add_adapters
from pm_lightning.models.backbone import image_ids, pack
from pm_lightning.models.lora_files import export_domain_lora
from pm_lightning.training.flow import FlowConfig, interpolate, per_sample_mse, sample_timesteps, velocity_target

ATTENTION = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
             "attn.add_v_proj", "attn.to_add_out"]  # fmt: skip
SEED_OFFSET = 7_000_000  # sequences of the style set: seeds no corpus split uses (those count from 0 per domain)


@dataclass
class StyleLoraConfig:
    """What the style LoRA is trained on and how long."""

    domain: str
    steps: int = 300
    rank: int = 8
    lr: float = 1e-3
    batch_size: int = 4
    pictures: int = 64
    resolution: int = 192  # picture side in px: the base's grid resolution (tiny 192, FLUX.1-dev 1024)
    seed: int = 0


def style_pictures(domain: str, n: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """`n` (picture (size, size, 3) uint8, caption) pairs: one late frame (the last half) of each of n sequences."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        seq = generate_sequence(domain, SEED_OFFSET + seed * 10_000 + i, size=size)
        frame = seq.frames[rng.randrange(len(seq.frames) // 2, len(seq.frames))]
        out.append((np.asarray(frame.convert("RGB")), seq.caption))
    return out


def train_style_lora(backbone, cfg: StyleLoraConfig, out, progress: bool = True, pictures=None) -> dict:
    """Train a style LoRA on `backbone` (its transformer gets the adapter) and write it to `out`; returns the
    first and last losses (means over the first and last tenth of the steps). `pictures`: (picture (R, R, 3) uint8,
    caption) pairs at `cfg.resolution`; default: `cfg.pictures` synthetic pictures of `cfg.domain`."""
    if pictures is None:
        pictures = style_pictures(cfg.domain, cfg.pictures, cfg.resolution, cfg.seed)
    transformer = backbone.transformer
    add_adapters(
        transformer, AdapterConfig(kind="lora", rank=cfg.rank, alpha=float(cfg.rank), target_modules=ATTENTION)
    )
    params = adapter_parameters(transformer)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    flow, g, rng = FlowConfig(), torch.Generator().manual_seed(cfg.seed), random.Random(cfg.seed)
    before = fixed_draw_loss(backbone, pictures, flow)
    losses = []
    transformer.train()
    for _ in progress_bar(range(cfg.steps), desc=f"style LoRA ({cfg.domain})", unit="step", enabled=progress):
        batch = [pictures[rng.randrange(len(pictures))] for _ in range(cfg.batch_size)]
        loss = _flow_loss(backbone, batch, flow, g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    transformer.eval()
    export_domain_lora(transformer, 0, out)
    tenth = max(1, len(losses) // 10)
    return {
        "first_loss": float(np.mean(losses[:tenth])),
        "last_loss": float(np.mean(losses[-tenth:])),
        "fixed_loss_before": before,
        "fixed_loss_after": fixed_draw_loss(backbone, pictures, flow),
    }


def _flow_loss(backbone, batch, flow: FlowConfig, g: torch.Generator) -> torch.Tensor:
    """(B,) flow-matching loss of (picture, caption) pairs with noise and t drawn from `g`."""
    pixels = torch.stack([torch.from_numpy(p.copy()).permute(2, 0, 1) for p, _ in batch]).float() / 127.5 - 1
    x0 = backbone.encode_images(pixels)  # (B, 16, h, w)
    embeds, pooled, txt_ids = backbone.encode_text([c for _, c in batch])
    h, w = x0.shape[-2:]
    noise = torch.randn(x0.shape, generator=g)
    t = sample_timesteps(x0.shape[0], flow, (h // 2) * (w // 2), generator=g)
    xt = pack(interpolate(x0, noise, t))  # (B, N, 64)
    pred = backbone.predict(xt, t, embeds, pooled, txt_ids, image_ids(h, w))
    return per_sample_mse(pred, pack(velocity_target(x0, noise)))


@torch.no_grad()
def fixed_draw_loss(backbone, pictures, flow: FlowConfig, draws: int = 4, seed: int = 1234) -> float:
    """Mean loss over every picture with the same noise and t draws each call: comparable before and after
    training (the per-step training losses are too noisy to show learning over a few dozen steps)."""
    g = torch.Generator().manual_seed(seed)
    return float(torch.cat([_flow_loss(backbone, pictures, flow, g) for _ in range(draws)]).mean())
