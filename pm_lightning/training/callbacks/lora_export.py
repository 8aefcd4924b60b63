"""Per-domain diffusers LoRA files with every checkpoint and at the end of training."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from lightning.pytorch import Callback

from pm_lightning.core.run_layout import FINAL, RunDir, step_tag
from pm_lightning.models.lora_files import FORMATS, adapter_skeleton, export_domain_lora, stage1_metadata
from pm_lightning.models.lora_names import SUFFIX, export_names
from pm_lightning.models.model_card import write_model_card

log = logging.getLogger(__name__)


class LoraExport(Callback):
    """Writes `<dirpath>/<tag>/<domain>.safetensors` (stock `FluxPipeline.load_lora_weights` reads them) and a
    `README.md` model card with the run's sample grid, so each folder can be pushed to the Hub as it is."""

    def __init__(
        self, dirpath: str | None = None, on_checkpoint: bool = True, formats: tuple[str, ...] = ("diffusers",)
    ):
        """
        Args:
            dirpath: output folder (default `<run dir>/lora`).
            on_checkpoint: also export next to every checkpoint (tag `step-N`); the end of training writes `final`.
            formats: "diffusers" (`<domain>.safetensors`) and / or "kohya" (`<domain>.kohya.safetensors`, for
                ComfyUI, Forge and kohya tools).
        """
        unknown = set(formats) - set(FORMATS)
        if unknown or not formats:
            raise ValueError(f"LoraExport.formats: {sorted(unknown) or formats} unknown; choose from {FORMATS}")
        self.dirpath, self.on_checkpoint, self.formats = dirpath, on_checkpoint, list(formats)
        self.last_dir: Path | None = None
        self.failures = 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.on_checkpoint:
            self.export(trainer, pl_module, step_tag(trainer.global_step))

    def on_fit_end(self, trainer, pl_module) -> None:
        # on_fit_end, not on_train_end: a resumed run that was killed after its last step but before (or during)
        # this export trains nothing more, and Lightning calls only on_fit_end for it
        self.export(trainer, pl_module, FINAL)

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
        written, header = {}, stage1_metadata(dict(pl_module.hparams))
        for (name, index), fmt in itertools.product(files.items(), self.formats):
            path = out / f"{name}{SUFFIX[fmt]}"
            try:  # non-essential: the checkpoint holds the adapters, and `python -m pm_lightning.export` rebuilds a file
                export_domain_lora(transformer, index, path, fmt=fmt, domain_name=name, metadata=header)
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
