"""One benchmarked FLUX stage-1 training step, built without a download: the setup, the real `Stage1Module` with a
`RandomBackbone` (random latents and text embeddings of the right shapes; the transformer built on the meta device and
initialised in place), its batch and optimizer, the step itself, and its FLOP count on the meta device. Measured and
reported by bench/flux_step.py (and bench/gpu_check.py)."""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import _paths  # noqa: F401 - bench/ is on sys.path as a script; this puts the repository there too
import torch
from torch import nn

from pm_lightning.models.adapter_config import AdapterConfig  # noqa: E402
from pm_lightning.models.alignment import AlignmentConfig  # noqa: E402
from pm_lightning.models.variants import TINY_FLUX_TRANSFORMER  # noqa: E402
from pm_lightning.training.flow import sample_timesteps  # noqa: E402
from pm_lightning.training.stage1 import Stage1Module  # noqa: E402

LATENT_CHANNELS, PX_PER_TOKEN = 16, 16  # VAE: 16 channels, 8 px per latent cell; packing 2 x 2 cells per token


@dataclass
class StepSetup:
    """What one benchmark run measures."""

    # "full" (the variant's transformer), "small" (the tiny Flux transformer, models/variants.py) or "narrow" (the
    # variant's depth at the tiny width: as many blocks and LoRA tensors as the full model, CPU-sized)
    scale: str = "full"
    variant: str = "flux-dev"
    device: str = "cuda"
    precision: str = "bf16-mixed"  # "bf16-mixed" (bf16 base + autocast) or "32"
    resolution: int = 1024  # px per side of the grid canvas
    text_tokens: int = 512
    kind: str = "masked"
    rank: int = 64
    domains: int = 21
    batch: int = 1
    align: bool = True
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.resolution % PX_PER_TOKEN:
            raise ValueError(f"--resolution must be a multiple of {PX_PER_TOKEN}, got {self.resolution}")
        if self.precision not in ("bf16-mixed", "32"):
            raise ValueError(f"--precision must be bf16-mixed or 32, got {self.precision!r}")

    @property
    def image_tokens(self) -> int:
        return (self.resolution // PX_PER_TOKEN) ** 2

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16-mixed" else torch.float32

    def transformer_config(self) -> dict:
        from pm_lightning.models.backbone import meta_transformer

        cfg = {k: v for k, v in dict(meta_transformer(self.variant).config).items() if not k.startswith("_")}
        if self.scale == "full":
            return cfg
        depth = {k: cfg[k] for k in ("num_layers", "num_single_layers")} if self.scale == "narrow" else {}
        return {**cfg, **TINY_FLUX_TRANSFORMER, **depth}


class RandomBackbone(nn.Module):
    """Stands in for FluxBackbone: the transformer, plus random latents / text embeddings of the right shapes."""

    def __init__(self, transformer: nn.Module, text_tokens: int, seed: int = 0):
        super().__init__()
        self.transformer, self.text_tokens, self.seed = transformer, text_tokens, seed

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def _randn(self, *shape: int) -> torch.Tensor:
        if self.device.type == "meta":
            return torch.empty(*shape, device="meta", dtype=self.dtype)
        g = torch.Generator(self.device).manual_seed(self.seed)
        return torch.randn(*shape, generator=g, device=self.device).to(self.dtype)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> random (B, 16, H/8, W/8) latents."""
        b, _, h, w = pixels.shape
        return self._randn(b, LATENT_CHANNELS, h // 8, w // 8)

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random (prompt_embeds (B, T, D_text), pooled (B, P), txt_ids (T, 3))."""
        cfg, b = self.transformer.config, len(captions)
        embeds = self._randn(b, self.text_tokens, cfg.joint_attention_dim)  # (B, T, D_text)
        pooled = self._randn(b, cfg.pooled_projection_dim)  # (B, P)
        return embeds, pooled, torch.zeros(self.text_tokens, 3, device=self.device, dtype=self.dtype)  # (T, 3)


# ---------------------------------------------------------------------------------------------- building


def build_module(setup: StepSetup, device: str | torch.device, checkpointing: bool = True) -> Stage1Module:
    """A Stage1Module around a random transformer: built on meta, materialised on `device` (unless meta)."""
    from diffusers import FluxTransformer2DModel

    module = Stage1Module(
        base=setup.variant,
        domains=[f"domain{i}" for i in range(setup.domains)],
        adapter=AdapterConfig(kind=setup.kind, rank=setup.rank),
        alignment=AlignmentConfig(enabled=setup.align),
        dtype={torch.bfloat16: "bfloat16", torch.float32: "float32"}[setup.dtype],
        gradient_checkpointing=checkpointing,
        seed=setup.seed,
    )
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(setup.transformer_config())
        nn.Module.to(transformer, setup.dtype)  # nn.Module.to: diffusers' own .to warns about dtype casts
        module.add_stage_adapters(transformer)  # the real add_adapters + alignment layers
    if torch.device(device).type != "meta":
        transformer.to_empty(device=device)  # tied A / gates stay tied: parameters are converted in place
        init_weights_(transformer, setup.seed)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    module.backbone = RandomBackbone(transformer, setup.text_tokens, setup.seed)
    return module.to(device).train()


@torch.no_grad()
def init_weights_(transformer: nn.Module, seed: int) -> None:
    """Random init in place on any device: U(+-1/sqrt(fan_in)) matrices, unit norms, zero biases.

    LoRA B gets a small non-zero init (as after some training, so the alignment term is non-zero)
    and the masked gates start at 1, as `add_adapters` initialises them.
    """
    torch.manual_seed(seed)
    for name, p in transformer.named_parameters():
        if "lora_gate" in name:
            p.fill_(1.0)
        elif p.dim() >= 2:
            bound = (1e-2 if "lora_B" in name else 1.0) / math.sqrt(p.shape[-1])
            p.uniform_(-bound, bound)
        else:
            p.fill_(1.0 if name.endswith("weight") else 0.0)
    for b in transformer.buffers():
        b.zero_()


class _HostIds(torch.Tensor):
    """Domain ids that stay on the host when moved to the meta device: set_domains range-checks them
    with .min()/.max(), which a meta tensor cannot answer; the adapters move them to meta themselves."""

    def to(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


def make_batch(setup: StepSetup, device) -> dict:
    """A stage-1 batch as ProcessDataModule yields it (pixels are only a shape: RandomBackbone ignores them)."""
    b, meta = setup.batch, torch.device(device).type == "meta"
    domains = torch.arange(b) % setup.domains  # (B,) one domain per sample
    return {
        "pixels": torch.zeros(b, 3, setup.resolution, setup.resolution, device=device),
        "caption": ["a random caption"] * b,
        "domain": domains.as_subclass(_HostIds) if meta else domains.to(device),
    }


def make_optimizer(module: Stage1Module) -> torch.optim.Optimizer:
    """The module's own optimizer (CAME by default) over the adapter parameters."""
    return module.configure_optimizers()["optimizer"]


def autocast(setup: StepSetup, device):
    """bf16 autocast as Lightning's bf16-mixed does; none at fp32 (nanoGPT: precision decided in one place)."""
    if setup.precision != "bf16-mixed" or torch.device(device).type == "meta":  # FLOPs do not depend on dtype
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def train_step(module: Stage1Module, optimizer, batch: dict, setup: StepSetup, device) -> torch.Tensor:
    """One stage-1 training step: the module's training_step under autocast, backward, optimizer step."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is skipped
        with autocast(setup, device):
            loss = module.training_step(batch, 0)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# ---------------------------------------------------------------------------------------------- FLOPs


def _meta_noise(module: Stage1Module):
    """draw_noise for the meta device (no generator there): same shapes, same timestep sampler."""

    def draw(x0: torch.Tensor, step: int):
        t = sample_timesteps(x0.shape[0], module.flow_cfg, x0.shape[1], device=x0.device)  # (B,)
        return torch.empty_like(x0), t

    return draw


def count_flops(setup: StepSetup, checkpointing: bool, what: str = "step") -> int:
    """FLOPs of one step ("step": teacher + student forward + backward) or of the student forward
    alone ("forward"), counted by FlopCounterMode on the meta device (shapes only, no memory)."""
    from torch.utils.flop_counter import FlopCounterMode

    module = build_module(setup, "meta", checkpointing=checkpointing)
    module.draw_noise = _meta_noise(module)
    batch = make_batch(setup, "meta")
    with FlopCounterMode(display=False) as counter:
        if what == "forward":
            x0, cond = module.encode_batch(batch)
            inputs = module.transformer_inputs(x0, torch.full((setup.batch,), 0.5, device="meta"), cond)
            module.transformer(**inputs)
        else:
            train_step(module, None, batch, setup, "meta")
    return counter.get_total_flops()
