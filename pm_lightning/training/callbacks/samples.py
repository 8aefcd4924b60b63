"""Validation sample grids for fixed per-domain prompts: saved to disk and logged as images."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers.utils import make_image_grid
from lightning.pytorch import Callback
from PIL import Image, ImageDraw

from pm_lightning.core.atomic import atomic_path
from pm_lightning.core.progress import disabled as progress_disabled
from pm_lightning.core.run_layout import FINAL, RunDir, sample_sheet, step_tag
from pm_lightning.data.domains import domain_index
from pm_lightning.training.logged_images import log_images

log = logging.getLogger(__name__)


class SampleGrids(Callback):
    """Every `every_n_steps` optimizer steps (and at the end), render one grid per fixed prompt."""

    def __init__(
        self,
        prompts: list[dict[str, str]] | None = None,
        every_n_steps: int = 100,
        resolution: int = 192,
        num_inference_steps: int = 20,
        guidance: float = 1.0,
        seed: int = 0,
        dirpath: str | None = None,
        at_start: bool = True,
    ):
        """
        Args:
            prompts: `[{"domain": name, "caption": text}, ...]`, rendered side by side.
            every_n_steps: interval in optimizer steps (0 = only at start and end).
            resolution: grid side in px.
            num_inference_steps: sampler steps.
            guidance: Flux-dev guidance.
            seed: sample i uses seed + i, so grids are comparable across steps.
            dirpath: where the PNGs go (default `<run dir>/samples`).
            at_start: also render before the first step (the "before" picture).
        """
        for p in prompts or []:
            if set(p) != {"domain", "caption"}:
                raise ValueError(f"SampleGrids.prompts entries need exactly 'domain' and 'caption', got {sorted(p)}")
        self.prompts = list(prompts or [])
        self.every_n_steps, self.resolution = every_n_steps, resolution
        self.num_inference_steps, self.guidance, self.seed = num_inference_steps, guidance, seed
        self.dirpath, self.at_start = dirpath, at_start
        self.last_path: Path | None = None
        self._last_step = 0
        self.failures = 0

    def out_dir(self, trainer) -> Path:
        return Path(self.dirpath or RunDir(trainer.default_root_dir).samples)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.at_start and trainer.global_step == 0:
            self.safe_render(trainer, pl_module, step_tag(0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps; several batches share one under accumulation
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.safe_render(trainer, pl_module, step_tag(step))

    def on_train_end(self, trainer, pl_module) -> None:
        self.safe_render(trainer, pl_module, FINAL)

    def safe_render(self, trainer, pl_module, tag: str) -> Path | None:
        """`render`, where a failed write (disk full, a read-only folder) is reported and training goes on."""
        try:
            return self.render(trainer, pl_module, tag)
        except OSError as err:
            self.failures += 1
            log.warning("sample grids %s: %s; training continues", tag, err)
            return None

    @torch.no_grad()
    def render(self, trainer, pl_module, tag: str) -> Path | None:
        """Generate, save a labelled sheet, log the grids. Rank zero renders alone, except under FSDP2, where a
        sharded block runs only when every rank runs it: every rank then samples the same grids (same seeds) and
        rank zero alone writes and logs."""
        from pm_lightning.training.strategies import is_sharded

        if not self.prompts:
            return None
        sharded = is_sharded(pl_module.transformer)
        if not (trainer.is_global_zero or sharded):
            return None
        images = self.sample(pl_module, progress=trainer.is_global_zero)
        if not trainer.is_global_zero:
            return None
        return self.save_and_log(trainer, pl_module, images, tag)

    def sample(self, pl_module, progress: bool = True) -> list[Image.Image]:
        """One grid per prompt, from the module's backbone with its adapters routed per prompt's domain."""
        from pm_lightning.inference.grid_sampling import generate_grids

        domains = torch.tensor([domain_index(p["domain"], pl_module.domains) for p in self.prompts])
        was_training = pl_module.training
        pl_module.eval()
        backbone = pl_module.backbone
        embeds = None
        if getattr(backbone, "text_encoder", True) is None:  # text_cache_only: the prompts come from the cache too
            embeds = backbone.encode_text([p["caption"] for p in self.prompts])[:2]
        vae_here = getattr(backbone, "vae_on_device", nullcontext)  # a parked VAE (latent cache) visits the GPU
        with vae_here():
            pipe = backbone.pipeline()
            pipe.set_progress_bar_config(disable=not progress or progress_disabled())
            images = generate_grids(
                pipe,
                [p["caption"] for p in self.prompts],
                domains,
                self.resolution,
                self.num_inference_steps,
                self.guidance,
                self.seed,
                getattr(pl_module.backbone, "max_sequence_length", None),
                embeds,
            )
        pl_module.train(was_training)
        return images

    def save_and_log(self, trainer, pl_module, images: list[Image.Image], tag: str) -> Path:
        """Rank zero: the labelled sheet `<samples dir>/<tag>.png`, the loggers' images, `on_samples`."""
        path = sample_sheet(self.out_dir(trainer), tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            labelled_sheet(images, [p["domain"] for p in self.prompts]).save(tmp, format="PNG")
        self.last_path = path
        captions = [f"{p['domain']}: {p['caption']}" for p in self.prompts]
        for logger in trainer.loggers:
            log_images(logger, "samples", images, captions, trainer.global_step)
        self.on_samples(trainer, pl_module, images, tag)
        return path

    def on_samples(self, trainer, pl_module, images: list[Image.Image], tag: str) -> None:
        """Hook for subclasses (scoring): called on rank zero with one grid per entry of `self.prompts`."""


def labelled_sheet(images: list[Image.Image], labels: list[str], label_height: int = 14) -> Image.Image:
    """Images side by side with a text label above each."""
    w, h = images[0].size
    sheet = Image.new("RGB", (w * len(images), h + label_height), "white")
    sheet.paste(make_image_grid([img.convert("RGB") for img in images], rows=1, cols=len(images)), (0, label_height))
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(labels):
        draw.text((i * w + 2, 1), label[: w // 6], fill="black")
    return sheet
