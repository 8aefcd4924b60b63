"""Per-domain diffusers LoRA files at the end of training and at their own interval (not with every checkpoint)."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from lightning.pytorch import Callback

from pm_lightning.core.dtypes import DTYPE_NAMES, torch_dtype
from pm_lightning.core.run_layout import FINAL, RunDir, step_tag
from pm_lightning.models.lora_files import FORMATS, adapter_skeleton, export_domain_lora, stage1_metadata
from pm_lightning.models.lora_names import SUFFIX, export_names
from pm_lightning.models.model_card import write_model_card

log = logging.getLogger(__name__)


class LoraExport(Callback):
    """Writes `<dirpath>/<tag>/<domain>.safetensors` (stock `FluxPipeline.load_lora_weights` reads them) and a
    `README.md` model card with the run's sample grid, so each folder can be pushed to the Hub as it is.

    Every domain is exported at the end of training (`final`) and every `every_n_train_steps` (`step-N`), an
    interval of its own: checkpoints hold the adapters already, and exporting 21 domains with each of them
    multiplied the disk a run needs (docs/BENCHMARKS.md, "LoRA export size"). List it after the sample-grid
    callbacks, so a step's card shows that step's grid (callbacks run in the order listed)."""

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_train_steps: int | None = None,
        formats: tuple[str, ...] = ("diffusers",),
        dtype: str = "auto",
    ):
        """
        Args:
            dirpath: output folder (default `<run dir>/lora`).
            every_n_train_steps: also export every N optimizer steps (tag `step-N`; not at `trainer.max_steps`,
                which `final` holds); None or 0: only at the end (`final`, always written).
            formats: "diffusers" (`<domain>.safetensors`) and / or "kohya" (`<domain>.kohya.safetensors`, for
                ComfyUI, Forge and kohya tools).
            dtype: the files' tensor dtype: "auto" (the frozen base's: bfloat16 for the FLUX configs, which train
                in bf16-mixed; float32 for the tiny CPU configs, 32-true), or float32 / bfloat16 / float16.
        """
        unknown = set(formats) - set(FORMATS)
        if unknown or not formats:
            raise ValueError(f"LoraExport.formats: {sorted(unknown) or formats} unknown; choose from {FORMATS}")
        if dtype != "auto" and dtype not in DTYPE_NAMES:
            raise ValueError(f"LoraExport.dtype: {dtype!r} unknown; choose 'auto' or one of {sorted(DTYPE_NAMES)}")
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise ValueError(f"LoraExport.every_n_train_steps: {every_n_train_steps} < 0; give N > 0, or 0 / null")
        self.dirpath, self.every_n_train_steps, self.formats = dirpath, every_n_train_steps or 0, list(formats)
        self.dtype = dtype
        self.last_dir: Path | None = None
        self.failures = 0
        self._last_step = 0
        self._final_written = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps; several batches share one under accumulation
        last = step == trainer.max_steps  # `final` follows with the same weights: not written twice
        if self.every_n_train_steps and step % self.every_n_train_steps == 0 and step != self._last_step and not last:
            self._last_step = step
            self.export(trainer, pl_module, step_tag(step))

    def on_fit_start(self, trainer, pl_module) -> None:
        self._final_written = False

    def on_train_end(self, trainer, pl_module) -> None:
        # before the strategy's teardown, which moves the model to CPU memory: the whole base on one device without
        # a strategy (Lightning's), only the adapters under FluxDDPStrategy (ddp.yaml), nothing under FSDP2
        self.export(trainer, pl_module, FINAL)
        self._final_written = True

    def on_fit_end(self, trainer, pl_module) -> None:
        # a resumed run that was killed after its last step but before (or during) the export trains nothing more:
        # Lightning calls only on_fit_end for it (after the teardown)
        if not self._final_written:
            self.export(trainer, pl_module, FINAL)

    def file_dtype(self, pl_module) -> torch.dtype:
        """The written tensors' dtype: the configured one, or for "auto" the frozen base's."""
        return pl_module.model_dtype() if self.dtype == "auto" else torch_dtype(self.dtype)

    def export(self, trainer, pl_module, tag: str) -> Path | None:
        """One file per configured domain and `unseen` (one `lora.safetensors` for the plain kind), written by rank
        zero. Under FSDP2 (at any world size, one process included: its parameters are DTensors too) every rank
        first takes part in gathering the adapter shards (a collective); rank zero then builds the files from a CPU
        copy of the whole adapters."""
        from pm_lightning.training.strategies import gathered_trainable_state, is_sharded

        transformer = pl_module.transformer
        if is_sharded(transformer):
            adapters = gathered_trainable_state(transformer)  # whole on rank 0, empty elsewhere
            if not trainer.is_global_zero:
                return None
            transformer = adapter_skeleton(pl_module.base, pl_module.adapter_cfg, adapters)
        elif not trainer.is_global_zero:
            return None
        run = RunDir(trainer.default_root_dir)
        out = Path(self.dirpath or run.loras) / tag
        out.mkdir(parents=True, exist_ok=True)
        files = export_names(pl_module.adapter_cfg.kind, list(pl_module.domains))
        written, header, dtype = {}, stage1_metadata(dict(pl_module.hparams)), self.file_dtype(pl_module)
        for (name, index), fmt in itertools.product(files.items(), self.formats):
            path = out / f"{name}{SUFFIX[fmt]}"
            try:  # non-essential: the checkpoint holds the adapters, and `python -m pm_lightning.export` rebuilds a file
                export_domain_lora(transformer, index, path, dtype, fmt, domain_name=name, metadata=header)
                written[path.name] = name
            except OSError as err:
                self.failures += 1
                log.warning(
                    "LoRA export: %s; training continues (rebuild it from a checkpoint: python -m pm_lightning.export)",
                    err,
                )
        if written:
            self.last_dir = out
            try:
                samples = run.latest_sample_sheet(tag)
                hparams = dict(pl_module.hparams)
                write_model_card(out, hparams, written, trainer.global_step, samples, "+".join(self.formats))
            except OSError as err:
                self.failures += 1
                log.warning("LoRA export: model card: %s; training continues", err)
        return out
