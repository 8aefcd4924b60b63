"""What every training stage shares: the frozen Flux backbone, encoding, noise, optimisation, checkpoints."""

from __future__ import annotations

import lightning as L
import torch

from pm_lightning.flow import FlowConfig, sample_timesteps, step_generator
from pm_lightning.models.backbone import image_ids, pack
from pm_lightning.optim import OptimizerConfig, build_optimizer, build_scheduler

VAL_SEED_OFFSET = 1_000_000  # validation noise never coincides with a training step's noise

class FlowMatchingModule(L.LightningModule):
    """What both stages share: the backbone, text/image encoding, checkpoints of trainable weights only."""

    def __init__(
        self,
        base: str = "tiny",
        domains: list[str] | None = None,
        flow: FlowConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        text_cache_dir: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.base, self.domains = base, list(domains or [])
        self.flow_cfg, self.optim_cfg = flow or FlowConfig(), optimizer or OptimizerConfig()
        self.dtype_name, self.gradient_checkpointing = dtype, gradient_checkpointing
        self.text_cache_dir, self.seed = text_cache_dir, seed
        self.backbone = None
        self.strict_loading = False  # checkpoints hold the trainable weights only

    # ------------------------------------------------------------------ model

    def configure_model(self) -> None:
        """Load the backbone once (lazily, so strategies can wrap it) and add this stage's adapters."""
        if self.backbone is not None:
            return
        from pm_lightning.models.backbone import FluxBackbone

        self.backbone = FluxBackbone.from_pretrained(
            self.base,
            dtype=_dtype(self.dtype_name),
            gradient_checkpointing=self.gradient_checkpointing,
            text_cache_dir=self.text_cache_dir,
        )
        self.add_stage_adapters(self.backbone.transformer)

    def add_stage_adapters(self, transformer: torch.nn.Module) -> None:
        """Inject this stage's trainable adapters into `transformer`."""
        raise NotImplementedError

    @property
    def transformer(self) -> torch.nn.Module:
        return self.backbone.transformer

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ inputs

    @torch.no_grad()
    def encode_batch(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Packed clean latents (B, N, 64) and the transformer's text/position inputs."""
        latents = self.backbone.encode_images(batch["pixels"].to(self.device, self.backbone.dtype))  # (B, 16, h, w)
        prompt_embeds, pooled, txt_ids = self.backbone.encode_text(list(batch["caption"]))
        h, w = latents.shape[-2:]
        cond = dict(
            encoder_hidden_states=prompt_embeds,
            pooled_projections=pooled,
            txt_ids=txt_ids,
            img_ids=image_ids(h, w, device=self.device),
        )
        return pack(latents), cond  # (B, N, 64)

    def transformer_inputs(self, xt: torch.Tensor, t: torch.Tensor, cond: dict) -> dict:
        """Keyword arguments of the Flux transformer for noisy tokens `xt` at times `t`."""
        inputs = dict(cond, hidden_states=xt.to(self.backbone.dtype), timestep=t.to(self.backbone.dtype), return_dict=False)
        if self.transformer.config.guidance_embeds:
            inputs["guidance"] = torch.full_like(t, self.flow_cfg.guidance, dtype=self.backbone.dtype)
        return inputs

    def draw_noise(self, x0: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise and timesteps that depend only on (seed, step, rank): exact after a resume."""
        g = step_generator(self.seed, step, self.global_rank, device=x0.device)
        t = sample_timesteps(x0.shape[0], self.flow_cfg, x0.shape[1], generator=g, device=x0.device)  # (B,)
        noise = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)  # (B, N, 64)
        return noise, t

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        optimizer = build_optimizer(self.trainable_parameters(), self.optim_cfg)
        scheduler = build_scheduler(optimizer, self.optim_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        # one fused norm over the trainable grads (Lightning's grad_norm() builds a per-parameter dict);
        # under FSDP / ZeRO this is the norm of this rank's shard
        grads = [p.grad for p in self.trainable_parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights: the frozen base is reloaded from its source."""
        # every name of a shared (tied) tensor too: fused q/k/v adapters share one A
        keep = {name for name, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}


def _dtype(name: str) -> torch.dtype:
    """Precision is decided here only."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"model.dtype must be one of {sorted(table)}, got {name!r}")
    return table[name]
