"""Stage 1: one LoRA over the Flux transformer (plain / asymmetric / masked), flow matching + alignment.

    L = mean_b [ L_fm(b) + lambda(t_b) * L_sup(b) ] + mask_l1 * |gates|_1

Every row of the ProcessMaker ablation is configuration: `adapter.kind` and `alignment.enabled`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, replace

import torch

from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_routing import set_domains
from pm_lightning.models.adapter_state import mask_l1
from pm_lightning.models.adapters import adapter_parameters, add_adapters
from pm_lightning.models.alignment import (
    SCHEDULES,
    AlignmentConfig,
    alignment_loss,
    alignment_weight,
    capture_features,
    teacher_features,
)
from pm_lightning.training.base import FlowMatchingModule
from pm_lightning.training.flow import interpolate, per_sample_mse, timestep_mean, velocity_target
from pm_lightning.training.nonfinite import terms_of


class Stage1Module(FlowMatchingModule):
    """Stage 1 (ProcessMaker / MakeAnything): grids of a whole process from a caption and a domain."""

    STAGE = 1

    def __init__(self, adapter: AdapterConfig | None = None, alignment: AlignmentConfig | None = None, **kwargs):
        """
        Args:
            adapter: adapter kind, rank, alpha, targets and mask settings (num_domains follows `domains`).
            alignment: representation alignment to the frozen base (on/off, layers, lambda0, schedule, normalize).
            **kwargs: the arguments every stage shares (`FlowMatchingModule`: base, domains, flow, optimizer,
                dtype, gradient_checkpointing, compile, text_cache_dir, seed).
        """
        super().__init__(**kwargs)
        self.adapter_cfg = replace(adapter or AdapterConfig(), num_domains=max(1, len(self.domains)))
        self.align_cfg = alignment or AlignmentConfig()
        self.save_stage_hparams(adapter=asdict(self.adapter_cfg), alignment=asdict(self.align_cfg))
        self.align_layers: list[int] = []

    def add_stage_adapters(self, transformer: torch.nn.Module) -> None:
        add_adapters(transformer, self.adapter_cfg)
        n_blocks = len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
        self.align_layers = self.align_cfg.resolve(n_blocks)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return adapter_parameters(self.transformer)

    def losses(self, batch: dict, step: int | list[int]) -> dict[str, torch.Tensor]:
        """Per-sample loss terms for one batch (noise drawn from `step`, or per sample from a list of keys)."""
        x0, cond = self.encode_batch(batch)  # (B, N, 64)
        noise, t = self.draw_noise(x0, step)
        inputs = self.transformer_inputs(interpolate(x0, noise, t), t, cond)
        align = self.align_cfg.enabled and self.training
        # routing stays set until the next batch: gradient checkpointing re-runs the forward in backward
        set_domains(self.transformer, batch["domain"].to(self.device))
        teacher = teacher_features(self.transformer, inputs, self.align_layers) if align else None
        tap = capture_features(self.transformer, self.align_layers) if align else nullcontext({})
        with tap as student:
            pred = self.transformer(**inputs)[0]  # (B, N, 64)
        terms = {"fm": per_sample_mse(pred, velocity_target(x0, noise)), "t": t}
        if align:
            terms["align"] = alignment_loss(student, teacher, self.align_cfg.gamma)  # (B,)
            terms["lambda"] = alignment_weight(t, self.align_cfg, self.schedule_mean(x0.shape[1]))  # (B,)
        return terms

    def schedule_mean(self, image_seq_len: int) -> float | None:
        """E_t[s(t)] over this module's timestep sampler at `image_seq_len` tokens (alignment.normalize), else None."""
        if not self.align_cfg.normalize:
            return None
        return timestep_mean(SCHEDULES[self.align_cfg.schedule], self.flow_cfg, image_seq_len)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch, self.noise_key(batch_idx))
        loss = terms["fm"].mean()
        self.log("loss/fm", loss, prog_bar=True)
        if "align" in terms:
            loss = loss + (terms["lambda"] * terms["align"]).mean()
            self.log("loss/align", terms["align"].mean(), prog_bar=True)
            self.log("lambda", terms["lambda"].mean())
        if self.adapter_cfg.mask_l1 > 0:
            l1 = mask_l1(self.transformer)
            loss = loss + self.adapter_cfg.mask_l1 * l1
            self.log("loss/mask_l1", l1)
        self.log("loss/total", loss)
        self.last_terms = terms_of({"loss/fm": terms["fm"], "loss/align": terms.get("align", 0.0), "loss/total": loss})
        return loss
