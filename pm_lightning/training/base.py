"""The shared stage base: every stage's arguments, the frozen Flux backbone, encoding, noise, optimisation,
per-domain validation, checkpoints of the trainable weights only.

A stage subclass declares only its own arguments and forwards the rest with `**kwargs`; jsonargparse
(LightningCLI) follows `super().__init__(**kwargs)`, so `--print_config` and `--help` show the shared keys
with the documentation below. Hyper-parameters are saved by `save_stage_hparams` only.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from pm_lightning.core.compat import ddp_ignore
from pm_lightning.core.errors import BadInput
from pm_lightning.core.validate import PositiveInt, Seed
from pm_lightning.data.pixels import float_pixels_of
from pm_lightning.models.adapter_config import CHECKPOINT_DEFAULTS
from pm_lightning.models.backbone import FluxBackbone, image_ids, pack
from pm_lightning.models.compile_blocks import compile_blocks
from pm_lightning.models.quantize import check_mode, quantize_base
from pm_lightning.models.vae_latents import LatentCache
from pm_lightning.training.flow import FlowConfig, sample_timesteps, step_generator
from pm_lightning.training.metrics import PerDomainMean
from pm_lightning.training.nonfinite import NonFiniteGuard
from pm_lightning.training.optim import OptimizerConfig, build_optimizer, build_scheduler
from pm_lightning.training.precision import base_dtype, parse_dtype

VAL_SEED_OFFSET = 1_000_000  # validation noise never coincides with a training step's noise


def check_strategy_for_quantize(strategy) -> None:
    """A quantized base trains on one device or under DDP; FSDP2 cannot shard torchao's quantized tensors (checked:
    `aten.split` / `new_zeros` are not implemented for them)."""
    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
        raise ValueError(
            f"model.init_args.quantize needs a single device or DDP (experiments/strategies/ddp.yaml), not "
            f"{type(strategy).__name__}: the sharded strategies cannot shard or cast the quantized base"
        )


class FlowMatchingModule(L.LightningModule):
    """What every stage shares: the backbone, text/image encoding, validation, checkpoints of trainable weights."""

    STAGE = 0  # set by each stage

    def __init__(
        self,
        base: str = "tiny",
        domains: list[str] | None = None,
        flow: FlowConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        dtype: str | None = None,
        gradient_checkpointing: bool = False,
        compile: bool = False,
        text_cache_dir: str | None = None,
        text_cache_only: bool = False,
        quantize: Literal["none", "int8", "fp8", "nf4"] = "none",
        latent_cache_dir: str | None = None,
        seed: Seed = 0,
        max_nonfinite_steps: PositiveInt = 5,
    ):
        """
        Args:
            base: Flux variant name ("tiny", "flux-dev", ...), a local diffusers directory or a hub id.
            domains: the domain list (linked from data.domains by the CLI); its order defines the domain indices.
            flow: timestep sampling and the constant guidance input.
            optimizer: CAME / AdamW and the learning-rate schedule.
            dtype: dtype of the frozen base ("float32", "bfloat16", "float16"); null = derived from the trainer's
                precision and strategy (`pm_lightning/training/precision.py`). Adapters always train in fp32.
            gradient_checkpointing: recompute block activations in the backward pass.
            compile: torch.compile each double- and single-stream block's forward once (regional compilation,
                `models/compile_blocks.py`): the first steps trace and compile (minutes at FLUX scale), later steps
                run the compiled blocks. Composes with gradient checkpointing, LoRA routing, the alignment hooks,
                DDP and FSDP2 (their hooks stay outside the compiled forward).
            text_cache_dir: on-disk cache of text embeddings keyed by caption text.
            text_cache_only: never load the text encoders (T5-XXL, CLIP): every caption, and every sample prompt,
                must be in `text_cache_dir` (fill it once with `python -m pm_lightning.text_cache`); a missing one
                stops the run with the caption and that command. Off: missing captions are encoded and cached.
            quantize: storage of the frozen base's Linear weights: "none" (the base dtype), "int8", "fp8" or "nf4"
                (torchao weight-only, `models/quantize.py`); the adapters stay fp32 on top. Single device or DDP only
                (FSDP2 cannot shard the quantized tensors).
            latent_cache_dir: read each grid's VAE latents from this cache (fill it once with
                `python -m pm_lightning.latent_cache`) instead of encoding pixels: the VAE then stays in CPU memory and
                moves to the GPU only to decode sample grids. A grid missing from the cache, or a cache made with
                another VAE, resolution or dtype, stops the run with the command to run (never a silent re-encode).
            seed: seed of the per-step noise and timesteps (and of stage 2's frame choice).
            max_nonfinite_steps: consecutive steps with a non-finite loss or gradient that are skipped (no optimizer
                update) before the run stops with a message naming the step and the last good checkpoint.
        """
        super().__init__()
        if dtype is not None:
            parse_dtype(dtype)  # a wrong name fails at load, not when the model is built
        if text_cache_only and not text_cache_dir:
            raise ValueError("model.init_args.text_cache_only needs model.init_args.text_cache_dir (the cache to read)")
        self.quantize = check_mode(quantize)
        self.latent_cache_dir = latent_cache_dir
        self.latent_cache = None  # the LatentCache, built with the backbone
        self.base, self.domains = base, list(domains or [])
        self.flow_cfg, self.optim_cfg = flow or FlowConfig(), optimizer or OptimizerConfig()
        self.dtype_name, self.gradient_checkpointing = dtype, gradient_checkpointing
        self.compiled_blocks = compile  # not `self.compile`: that is nn.Module's compile()
        self.text_cache_dir, self.text_cache_only, self.seed = text_cache_dir, text_cache_only, seed
        self.backbone = None
        self.val_fm: PerDomainMean | None = None
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self.last_terms: dict[str, torch.Tensor | float] = {}  # the last step's loss terms, for messages
        self.strict_loading = False  # checkpoints hold the trainable weights only

    def save_stage_hparams(self, **own) -> None:
        """Save the shared arguments and the stage's own (`own`) as the checkpoint's hyper-parameters."""
        shared = {
            "stage": self.STAGE,
            "base": self.base,
            "domains": self.domains,
            "flow": asdict(self.flow_cfg),
            "optimizer": asdict(self.optim_cfg),
            "dtype": self.dtype_name,
            "gradient_checkpointing": self.gradient_checkpointing,
            "compile": self.compiled_blocks,
            "text_cache_dir": self.text_cache_dir,
            "text_cache_only": self.text_cache_only,
            "quantize": self.quantize,
            "latent_cache_dir": self.latent_cache_dir,
            "seed": self.seed,
            "max_nonfinite_steps": self.nonfinite.limit,
        }
        self.save_hyperparameters({**shared, **own})

    def model_dtype(self) -> torch.dtype:
        """The frozen base's dtype: explicit, else from the attached trainer's precision and strategy."""
        trainer = self._trainer
        if trainer is None:
            return base_dtype(None, None, self.dtype_name)
        return base_dtype(trainer.precision, trainer.strategy, self.dtype_name)

    # ------------------------------------------------------------------ model

    def configure_model(self) -> None:
        """Load the backbone once (lazily, so strategies can wrap it), prepare and quantize the frozen base, and add
        this stage's adapters on top."""
        if self.backbone is not None:
            return

        if self.quantize != "none":
            check_strategy_for_quantize(self._trainer.strategy if self._trainer is not None else None)
        self.backbone = FluxBackbone.from_pretrained(
            self.base,
            dtype=self.model_dtype(),
            gradient_checkpointing=self.gradient_checkpointing,
            text_cache_dir=self.text_cache_dir,
            text_encoders=not self.text_cache_only,
        )
        if self.latent_cache_dir:
            self.latent_cache = LatentCache(self.latent_cache_dir, self.backbone.vae, self.model_dtype(), self.base)
            self.backbone.park_vae()  # CPU memory, out of the module tree: never on the GPU for a training step
            resolution = getattr(
                getattr(getattr(self._trainer, "datamodule", None), "hparams", None), "resolution", None
            )
            if resolution:  # a cache of another VAE / resolution / dtype is refused before any step
                self.latent_cache.check(resolution)
        self.prepare_base(self.backbone)
        quantize_base(self.backbone.transformer, self.quantize)
        loaded = {id(p) for p in self.backbone.parameters()}  # the frozen weights every rank reads from the files
        self.add_stage_adapters(self.backbone.transformer)
        if self.compiled_blocks:
            compile_blocks(self.backbone.transformer)
        # Every rank loads (and quantizes) the same files, so DDP need not broadcast them (a quantized base it cannot);
        # its broadcast also writes each tensor back in place, which turns a memory-mapped base's clean pages, shared
        # by the ranks, into a private copy per rank (docs/SCALING.md, "Host memory per rank").
        ddp_ignore(self, [name for name, p in self.named_parameters() if id(p) in loaded])

    def prepare_base(self, backbone) -> None:
        """Change the frozen base before it is quantized and adapters are added (stage 2 fuses its stage-1 LoRA into a base
        that is to be quantized; otherwise it adds that LoRA as a frozen adapter, leaving the base unwritten)."""

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
        latents = self.clean_latents(batch)  # (B, 16, h, w)
        prompt_embeds, pooled, txt_ids = self.backbone.encode_text(list(batch["caption"]))
        h, w = latents.shape[-2:]
        cond = dict(
            encoder_hidden_states=prompt_embeds,
            pooled_projections=pooled,
            txt_ids=txt_ids,
            img_ids=image_ids(h, w, device=self.device),
        )
        return pack(latents), cond  # (B, N, 64)

    def clean_latents(self, batch: dict) -> torch.Tensor:
        """(B, 16, h, w) latents of the batch's grids: read from the latent cache, else encoded by the VAE."""
        pixels = float_pixels_of(batch)  # (B, 3, H, W)
        if self.latent_cache is None:
            return self.backbone.encode_images(pixels.to(self.device, self.backbone.dtype))
        resolution = pixels.shape[-1]
        latents = self.latent_cache.load(batch["grid_id"], resolution, batch.get("key"), batch.get("url"))
        return latents.to(self.device, self.backbone.dtype)

    def transformer_inputs(self, xt: torch.Tensor, t: torch.Tensor, cond: dict) -> dict:
        """Keyword arguments of the Flux transformer for noisy tokens `xt` at times `t`."""
        inputs = dict(
            cond, hidden_states=xt.to(self.backbone.dtype), timestep=t.to(self.backbone.dtype), return_dict=False
        )
        if self.transformer.config.guidance_embeds:
            inputs["guidance"] = torch.full_like(t, self.flow_cfg.guidance, dtype=self.backbone.dtype)
        return inputs

    def noise_key(self, batch_idx: int) -> int:
        """The key of a training micro-batch's noise and t (and stage 2's frame choice): the optimizer step, or with
        k micro-batches per step (gradient accumulation) step * k + micro-batch index, so every micro-batch draws
        its own. Lightning closes an accumulation window when the epoch's batch count reaches a multiple of k (or
        the epoch ends), so the micro-batch index is batch_idx mod k; a resume restarts at a step boundary and
        draws the same keys again."""
        k = self._trainer.accumulate_grad_batches if self._trainer is not None else 1
        return self.global_step * k + batch_idx % k

    def draw_noise(self, x0: torch.Tensor, step: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise and timesteps that depend only on (seed, step, rank): exact after a resume. `step` is a training
        micro-batch's `noise_key`, or one key per sample (validation: from the sample's place in the validation
        stream, rank-free, so the figures do not depend on how samples are split between ranks)."""
        if isinstance(step, list):
            drawn = [self._draw(x0[i : i + 1], key, 0) for i, key in enumerate(step)]
            return torch.cat([n for n, _ in drawn]), torch.cat([t for _, t in drawn])  # (B, N, 64), (B,)
        return self._draw(x0, step, self.global_rank)

    def _draw(self, x0: torch.Tensor, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = step_generator(self.seed, step, rank, device=x0.device)
        t = sample_timesteps(x0.shape[0], self.flow_cfg, x0.shape[1], generator=g, device=x0.device)  # (B,)
        noise = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)  # (B, N, 64)
        return noise, t

    # ------------------------------------------------------------------ validation

    def losses(self, batch: dict, step: int | list[int]) -> dict[str, torch.Tensor]:
        """Per-sample loss terms of one batch (noise drawn from `step`, or per sample from a list of keys); "fm" is
        the flow-matching loss (B,)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """The per-domain validation metric over the model's domains and the validation data's other domains."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        extra = [d for d in getattr(datamodule, "val_domains", None) or [] if d not in self.domains]
        self.val_fm = PerDomainMean(self.domains + extra)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Per-sample losses, noise keyed by each sample's place in the validation stream; a rank's padding items
        (`batch["valid"]` False, `data/rank_slice.py`) are left out of the metrics."""
        index = batch.get("index")
        keys = [VAL_SEED_OFFSET + int(i) for i in index] if index is not None else VAL_SEED_OFFSET + batch_idx
        fm = self.losses(batch, keys)["fm"]  # (B,)
        valid = batch["valid"].tolist() if "valid" in batch else [True] * len(fm)
        if self.val_fm is None:
            self.setup("validate")
        names = [name for name, keep in zip(batch["domain_name"], valid) if keep]
        self.val_fm.to(fm.device).update(fm[torch.tensor(valid, device=fm.device)], names)  # (B_valid,)

    def on_validation_epoch_end(self) -> None:
        """Sums and counts over every rank's real samples: the figures of a single process on the same samples."""
        if self.val_fm is None:
            return
        per_domain = self.val_fm.compute()  # summed over ranks: the same dict on every rank
        self.log("val/loss_fm", self.val_fm.overall, prog_bar=True, sync_dist=True)
        self.log_dict({f"val/loss_fm/{name}": value for name, value in per_domain.items()}, sync_dist=True)
        self.val_fm.reset()

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        optimizer = build_optimizer(self.trainable_parameters(), self.optim_cfg)
        scheduler = build_scheduler(optimizer, self.optim_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Lightning's closure (training_step + backward), then the optimizer step only when the loss and every
        gradient are finite on every rank (`training/nonfinite.py`); a skipped step leaves weights and optimizer
        state untouched (its batch was consumed, so it still counts in global_step and max_steps)."""
        loss = optimizer_closure()
        if self.nonfinite.check(self, loss):
            optimizer.step(closure=lambda: loss)  # backward already ran: the step's closure only hands the loss on
        else:
            optimizer.zero_grad(set_to_none=True)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.log("train/skipped_steps", float(self.nonfinite.skipped))
        skipped = getattr(getattr(self._trainer, "datamodule", None), "skipped", None) or {}
        for reason, count in skipped.items():  # corrupt / missing data, summed over the loader's workers
            self.log(f"data/skipped/{reason}", float(count))

    def on_before_optimizer_step(self, optimizer) -> None:
        # the fused norm the non-finite check just took (before clipping): global under DDP and FSDP2
        if self.nonfinite.grad_norm is not None:
            self.log("train/grad_norm", self.nonfinite.grad_norm)
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ checkpoints

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another stage or adapter before its (non-strict) weights load silently into nothing."""
        hp = checkpoint.get("hyper_parameters") or {}
        if hp.get("stage") is not None and hp["stage"] != self.STAGE:
            raise BadInput(
                f"the checkpoint is a stage-{hp['stage']} checkpoint and this config trains stage {self.STAGE}"
            )
        mine = dict(self.hparams.get("adapter") or {})
        theirs = {**CHECKPOINT_DEFAULTS, **(hp.get("adapter") or {})} if hp.get("adapter") else {}
        keys = ("kind", "rank", "num_domains") + (("gates",) if mine.get("kind") == "masked" else ())
        for key in keys:
            if key in mine and key in theirs and mine[key] != theirs[key]:
                raise BadInput(
                    f"the checkpoint's adapter has {key}={theirs[key]!r}, this config's {key}={mine[key]!r}: set "
                    f"model.init_args.adapter.{key}: {theirs[key]} to resume it"
                )
        keep = self.trainable_names()
        missing = sorted(keep - set(checkpoint.get("state_dict") or {}))
        if keep and missing:
            raise BadInput(
                f"the checkpoint lacks {len(missing)} of this model's {len(keep)} trainable tensors (e.g. {missing[0]})"
            )

    def trainable_names(self) -> set[str]:
        """State-dict names of the trainable weights, every name of a shared (tied) tensor included: fused q/k/v
        adapters share one A."""
        return {name for name, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights: the frozen base is reloaded from its source."""
        keep = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
