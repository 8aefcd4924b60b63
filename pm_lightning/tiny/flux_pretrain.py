"""Pretraining loops of the tiny base on CPU: the VAE, its latent statistics, then text-to-image flow matching."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pm_lightning.models.backbone import image_ids, pack
from pm_lightning.tiny.frame_pools import FramePool, random_crops, to_pixels
from pm_lightning.training.flow import FlowConfig, interpolate, sample_timesteps, velocity_target


@dataclass
class PretrainConfig:
    """Steps, batches and learning rates of the tiny-base pretraining.

    Attributes:
        seed: the one seed every random draw derives from.
        vae_steps / vae_batch / vae_crop: VAE training on random crops of frames of every size.
        kl_weight: weight of the KL term (per latent element) against L1 + MSE per pixel.
        pools: canvas size -> training sequences per domain rendered at that size.
        batches: canvas size -> transformer batch at that size (one size per batch).
        size_cycle: the order in which transformer steps visit the sizes.
        steps: transformer (+ text encoder) optimisation steps.
    """

    seed: int = 0
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_crop: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-4
    pools: dict = field(default_factory=lambda: {64: 240, 128: 60, 192: 60})
    batches: dict = field(default_factory=lambda: {64: 64, 128: 24, 192: 12})
    size_cycle: tuple[int, ...] = (64, 192, 128, 192, 64, 192)
    steps: int = 4200
    lr: float = 1e-3
    warmup: int = 100
    val_per_domain: int = 6

    def __post_init__(self):
        for size in self.size_cycle:
            if size not in self.pools or size not in self.batches:
                raise ValueError(f"size_cycle size {size} needs an entry in pools and batches")
            if size % 16:
                raise ValueError(f"canvas size {size} must be a multiple of 16 (8x VAE, 2x2 packing)")


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10%: the multiplier of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


# -- VAE ------------------------------------------------------------------------------------------------


def vae_loss(vae, x: torch.Tensor, kl_weight: float, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, reconstruction L1) for a batch in [-1, 1]: L1 + MSE + kl_weight * KL per latent element."""
    post = vae.encode(x).latent_dist
    z = post.sample(generator)  # (B, C, h, w)
    rec = vae.decode(z).sample  # (B, 3, H, W)
    l1 = (rec - x).abs().mean()
    kl = post.kl().mean() / z[0].numel()
    return l1 + F.mse_loss(rec, x) + kl_weight * kl, l1


def train_vae(vae, pools: dict[int, FramePool], cfg: PretrainConfig) -> dict:
    """Train the AutoencoderKL on random crops of frames of every canvas size."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sizes = sorted(pools)
    vae.train()
    start, ema = time.time(), None
    bar = tqdm(range(cfg.vae_steps), desc="vae", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * lr_at(step, cfg.vae_steps, 50)
        pool = pools[sizes[step % len(sizes)]]
        x = to_pixels(random_crops(pool, cfg.vae_batch, cfg.vae_crop, g))  # (B, 3, crop, crop)
        loss, l1 = vae_loss(vae, x, cfg.kl_weight, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = l1.item() if ema is None else 0.95 * ema + 0.05 * l1.item()
        bar.set_postfix(l1=f"{ema:.4f}")
    vae.eval()
    return {"vae_steps": cfg.vae_steps, "vae_seconds": round(time.time() - start), "vae_l1_final": round(ema, 4)}


@torch.no_grad()
def latent_stats(vae, pools: dict[int, FramePool], per_pool: int = 256) -> tuple[float, float]:
    """(mean, std) over every element of the posterior means of a sample of frames, as Flux's shift/scale."""
    values = []
    for size in sorted(pools):
        pixels = to_pixels(pools[size].pixels[:: max(1, len(pools[size]) // per_pool)])
        for chunk in pixels.split(32):
            values.append(vae.encode(chunk).latent_dist.mode().flatten())
    v = torch.cat(values)
    return v.mean().item(), v.std().item()


@torch.no_grad()
def encode_pool(vae, pool: FramePool, batch: int = 32) -> torch.Tensor:
    """(N, 16, S/8, S/8) Flux latents (z - shift) * scale of every frame in the pool."""
    cfg = vae.config
    out = [
        (vae.encode(to_pixels(x)).latent_dist.mode() - cfg.shift_factor) * cfg.scaling_factor
        for x in pool.pixels.split(batch)
    ]
    return torch.cat(out)


@torch.no_grad()
def reconstruction_l1(vae, pool: FramePool, count: int = 64) -> float:
    """Mean absolute error (in [-1, 1] units) of decode(encode(x)) on `count` frames."""
    x = to_pixels(pool.pixels[:count])
    rec = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in x.split(16)])
    return (rec.clamp(-1, 1) - x).abs().mean().item()


# -- transformer ------------------------------------------------------------------------------------------


@dataclass
class LatentPool:
    """Encoded frames of one canvas size with their tokenised captions."""

    latents: torch.Tensor  # (N, 16, h, w)
    clip_ids: torch.Tensor  # (N, 77)
    t5_ids: torch.Tensor  # (N, T)


def tokenize(pipe, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP and T5 input ids exactly as FluxPipeline pads them."""
    kw = dict(padding="max_length", truncation=True, return_tensors="pt")
    clip = pipe.tokenizer(captions, max_length=pipe.tokenizer.model_max_length, **kw).input_ids
    t5 = pipe.tokenizer_2(captions, max_length=pipe.tokenizer_2.model_max_length, **kw).input_ids
    return clip, t5


def latent_pool(pipe, pool: FramePool) -> LatentPool:
    return LatentPool(encode_pool(pipe.vae, pool), *tokenize(pipe, pool.captions))


def flow_loss(transformer, clip, t5, batch: LatentPool, generator: torch.Generator, flow: FlowConfig) -> torch.Tensor:
    """Text-to-image flow matching on one batch: MSE between predicted and true velocity eps - x0."""
    b, _, h, w = batch.latents.shape
    x0 = pack(batch.latents)  # (B, N, 64)
    pooled = clip(batch.clip_ids).pooler_output  # (B, P)
    embeds = t5(batch.t5_ids)[0]  # (B, T, D)
    t = sample_timesteps(b, flow, x0.shape[1], generator)  # (B,)
    noise = torch.randn(x0.shape, generator=generator)
    pred = transformer(
        hidden_states=interpolate(x0, noise, t),
        timestep=t,
        guidance=torch.full((b,), flow.guidance),
        pooled_projections=pooled,
        encoder_hidden_states=embeds,
        txt_ids=torch.zeros(embeds.shape[1], 3),
        img_ids=image_ids(h, w),
        return_dict=False,
    )[0]  # (B, N, 64)
    return F.mse_loss(pred, velocity_target(x0, noise))


def take(pool: LatentPool, idx: torch.Tensor) -> LatentPool:
    return LatentPool(pool.latents[idx], pool.clip_ids[idx], pool.t5_ids[idx])


def train_transformer(pipe, pools: dict[int, LatentPool], cfg: PretrainConfig, flow: FlowConfig) -> dict:
    """Train transformer and both text encoders jointly; each batch holds frames of one canvas size."""
    modules = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    for m in modules:
        m.train()
    start, ema, history = time.time(), {}, []
    bar = tqdm(range(cfg.steps), desc="flux", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_at(step, cfg.steps, cfg.warmup)
        size = cfg.size_cycle[step % len(cfg.size_cycle)]
        pool = pools[size]
        batch = take(pool, torch.randint(len(pool.latents), (cfg.batches[size],), generator=g))
        loss = flow_loss(pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, batch, g, flow)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema[size] = loss.item() if size not in ema else 0.98 * ema[size] + 0.02 * loss.item()
        bar.set_postfix({f"loss{s}": f"{v:.3f}" for s, v in sorted(ema.items())})
        if (step + 1) % max(1, cfg.steps // 10) == 0:
            history.append({"step": step + 1, **{str(s): round(v, 4) for s, v in sorted(ema.items())}})
    for m in modules:
        m.eval()
    return {
        "steps": cfg.steps,
        "seconds": round(time.time() - start),
        "loss_history": history,
        "final_loss": {str(s): round(v, 4) for s, v in sorted(ema.items())},
    }


@torch.no_grad()
def validation_loss(
    transformer, clip, t5, pools: dict[int, LatentPool], flow: FlowConfig, seed: int = 1234, batch: int = 32
) -> dict:
    """Flow-matching loss per canvas size on held-out frames with fixed t and noise (comparable across models)."""
    out = {}
    for size, pool in sorted(pools.items()):
        g = torch.Generator().manual_seed(seed)
        losses = []
        for idx in torch.arange(len(pool.latents)).split(batch):
            losses.append(flow_loss(transformer, clip, t5, take(pool, idx), g, flow).item() * len(idx))
        out[str(size)] = round(sum(losses) / len(pool.latents), 4)
    out["mean"] = round(sum(out.values()) / len(out), 4)
    return out
