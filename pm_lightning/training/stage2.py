"""Stage 2 (ProcessMaker dual reference) and ReCraft (MakeAnything): clean reference cells, a new LoRA.

    x_t = m * x0 + (1 - m) * ((1 - t) x0 + t eps)        m = 1 on the reference cells' tokens
    L   = mean_b  sum_n (1 - m_n) |v_theta(x_t, t) - (eps - x0)|^2 / sum_n (1 - m_n)

`mode="dual"`: frames (a, b, c, d) of one sequence in a 2x2 serpentine grid, a (top left) and d
(bottom left) clean. `mode="recraft"`: the sequence's own grid, its last serpentine cell (the finished
image) clean. The base is the stage-1 backbone with the stage-1 LoRA file on it as a frozen, unmerged peft adapter
(diffusers' `load_lora_weights`; fused into the weights instead when the base is quantized), and a new plain LoRA
trains beside it. The base weights are never written, so no rank makes a private copy of a memory-mapped base
(docs/SCALING.md, "Host memory per rank"). Layouts and masks: `data/references.py`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, replace

import torch

from pm_lightning.core.validate import PositiveInt, Side
from pm_lightning.data.grid import tensor_frames_to_grid
from pm_lightning.data.pixels import float_pixels_of
from pm_lightning.data.reference_cells import (
    DUAL_LAYOUT,
    MODES,
    cell_token_mask,
    check_cell,
    dual_frames,
    recraft_frames,
    reference_positions,
    selection_generator,
    stage2_caption,
    with_clean_references,
)
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_routing import set_domains
from pm_lightning.models.adapters import adapter_parameters, add_adapters
from pm_lightning.models.backbone import image_ids, pack
from pm_lightning.models.lora_files import check_stage1_file, file_sha256, fuse_lora_file, load_frozen_lora_file
from pm_lightning.training.base import FlowMatchingModule
from pm_lightning.training.flow import interpolate, per_sample_mse, velocity_target
from pm_lightning.training.nonfinite import terms_of


class Stage2Module(FlowMatchingModule):
    """Stage 2 / ReCraft: the learned cells of a grid given clean reference cells, one plain LoRA."""

    STAGE = 2

    def __init__(
        self,
        stage1: str | None = None,
        adapter: AdapterConfig = AdapterConfig(kind="lora", rank=16),
        mode: str = "dual",
        cell: Side = 64,
        max_gap: PositiveInt = 2,
        step_text: bool = False,
        **kwargs,
    ):
        """
        Args:
            stage1: a diffusers-format stage-1 LoRA file applied to the base (e.g. the domain-free
                `runs/tiny/lora/final/unseen.safetensors`); None = the plain base.
            adapter: the new LoRA (kind must be "lora"); stage 2 routes nothing by domain.
            mode: "dual" (2x2, references top left and bottom left) or "recraft" (the sequence's
                grid, reference = the finished image in the last serpentine cell).
            cell: dual mode: frame size in px (multiple of 16); the grid is 2 * cell. ReCraft keeps the
                data module's grid (its per-cell resize), whose side is `data.resolution`.
            max_gap: dual mode: largest index gap between consecutive chosen frames (1 = consecutive).
            step_text: dual mode: append ", between: <step b>; <step c>" to the caption when step texts exist.
            **kwargs: the arguments every stage shares (`FlowMatchingModule`: base, domains, flow, optimizer,
                dtype, gradient_checkpointing, compile, text_cache_dir, seed).
        """
        super().__init__(**kwargs)
        if self.latent_cache_dir:
            raise ValueError(
                "model.init_args.latent_cache_dir is for stage 1: stage 2 and ReCraft encode each chosen frame on its "
                "own (a cell of the grid, resized), not the grid the cache holds"
            )
        if adapter.kind != "lora":
            raise ValueError(
                f"model.init_args.adapter.kind must be 'lora' for stage 2 (domain-free), got {adapter.kind!r}"
            )
        if mode not in MODES:
            raise ValueError(f"model.init_args.mode must be one of {MODES}, got {mode!r}")
        check_cell(cell)
        if max_gap < 1:
            raise ValueError(f"model.init_args.max_gap must be >= 1, got {max_gap}")
        self.stage1 = str(check_stage1_file(stage1)) if stage1 is not None else None
        self.adapter_cfg = replace(adapter, num_domains=1)
        self.mode, self.cell, self.max_gap, self.step_text = mode, cell, max_gap, step_text
        self.save_stage_hparams(
            stage1=self.stage1,
            stage1_sha256=file_sha256(self.stage1) if self.stage1 else None,
            adapter=asdict(self.adapter_cfg),
            mode=mode,
            cell=cell,
            max_gap=max_gap,
            step_text=step_text,
        )

    # ------------------------------------------------------------------ model

    def prepare_base(self, backbone) -> None:
        if self.stage1 and self.quantize != "none":  # into the unquantized weights, before `quantize` stores them
            fuse_lora_file(backbone, self.stage1)  # (quantizing makes each rank's own copy of the base anyway)

    def add_stage_adapters(self, transformer: torch.nn.Module) -> None:
        if self.stage1 and self.quantize == "none":  # frozen, unmerged: the base's weights are never written
            load_frozen_lora_file(self.backbone, self.stage1)
        add_adapters(transformer, self.adapter_cfg)
        set_domains(transformer, None)  # domain-free routing

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return adapter_parameters(self.transformer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("hyper_parameters", {}).get("stage1_sha256")
        if saved != self.hparams.get("stage1_sha256"):
            warnings.warn(
                f"the stage-1 file {self.stage1!r} differs from the one this checkpoint was trained on", stacklevel=2
            )

    # ------------------------------------------------------------------ samples

    def reference_samples(self, batch: dict, step: int | list[int]) -> dict:
        """Batch dict -> per-sample frames (n, 3, c, c), layout, reference positions and caption for `mode`; frames
        drawn from `step`, or per sample from a list of keys (validation, as `draw_noise`)."""
        if isinstance(step, list):
            gens = [selection_generator(self.seed, key, 0) for key in step]
        else:
            gens = [selection_generator(self.seed, step, self.global_rank)] * len(batch["pixels"])
        out = {"frames": [], "rows": [], "cols": [], "references": [], "caption": []}
        for i, (pixels, g) in enumerate(zip(float_pixels_of(batch), gens)):
            rows, cols = int(batch["rows"][i]), int(batch["cols"][i])
            caption, steps = batch["caption"][i], batch["steps"][i]
            if self.mode == "dual":
                frames, picked = dual_frames(pixels, rows, cols, self.cell, self.max_gap, g)  # (4, 3, c, c)
                caption = stage2_caption(caption, steps, picked[1:3], self.step_text)
                rows, cols = DUAL_LAYOUT
            else:
                frames = recraft_frames(pixels, rows, cols)  # (n, 3, H/rows, W/cols)
            out["frames"].append(frames)
            out["rows"].append(rows)
            out["cols"].append(cols)
            out["references"].append(reference_positions(self.mode, rows, cols))
            out["caption"].append(caption)
        return out

    @torch.no_grad()
    def encode_samples(self, samples: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Packed clean latents (B, N, 64), transformer inputs and the (B, N) reference-token mask.

        Every frame is VAE-encoded on its own, so a clean reference cell holds exactly VAE(frame),
        which is what inference writes into it.
        """
        grids = [self._latent_grid(f, r, c) for f, r, c in zip(samples["frames"], samples["rows"], samples["cols"])]
        shapes = {g.shape for g in grids}
        if len(shapes) > 1:
            raise ValueError(f"samples of one batch give latent grids of different shapes {sorted(shapes)}")
        latents = torch.stack(grids)  # (B, 16, h, w)
        h, w = latents.shape[-2:]
        ids = image_ids(h, w, device=self.device)  # (N, 3)
        mask = torch.stack(
            [
                cell_token_mask(ids, r, c, refs)
                for r, c, refs in zip(samples["rows"], samples["cols"], samples["references"])
            ]
        )  # (B, N)
        prompt_embeds, pooled, txt_ids = self.backbone.encode_text(list(samples["caption"]))
        cond = dict(encoder_hidden_states=prompt_embeds, pooled_projections=pooled, txt_ids=txt_ids, img_ids=ids)
        return pack(latents), cond, mask

    def _latent_grid(self, frames: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """(n, 3, c, c) frames -> (16, rows*c/8, cols*c/8) latent grid of per-frame encodings."""
        latents = self.backbone.encode_images(frames.to(self.device, self.backbone.dtype))  # (n, 16, c/8, c/8)
        return tensor_frames_to_grid(latents, rows, cols)  # (16, h, w)

    # ------------------------------------------------------------------ loss

    def losses(self, batch: dict, step: int | list[int]) -> dict[str, torch.Tensor]:
        """Per-sample flow-matching loss over the learned cells (frames and noise drawn from `step`)."""
        x0, cond, mask = self.encode_samples(self.reference_samples(batch, step))  # (B, N, 64), (B, N)
        noise, t = self.draw_noise(x0, step)
        xt = with_clean_references(interpolate(x0, noise, t), x0, mask)  # references stay clean
        pred = self.transformer(**self.transformer_inputs(xt, t, cond))[0]  # (B, N, 64)
        learned = (~mask).unsqueeze(-1)  # (B, N, 1)
        return {"fm": per_sample_mse(pred, velocity_target(x0, noise), weight=learned), "t": t, "mask": mask}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.losses(batch, self.noise_key(batch_idx))["fm"].mean()
        self.log("loss/fm", loss, prog_bar=True)
        self.log("loss/total", loss)
        self.last_terms = terms_of({"loss/fm": loss})
        return loss
