"""The resolved config: saved as `<run dir>/config.yaml` (LightningCLI), inside every checkpoint, and as the
logger's run config (`resolved_config`: on W&B the whole config, so runs of an ablation compare by any key)."""

from __future__ import annotations

from lightning.pytorch.cli import SaveConfigCallback

from pm_lightning.core.atomic import atomic_path
from pm_lightning.core.run_layout import RunDir


class SaveConfigWithCheckpoints(SaveConfigCallback):
    """LightningCLI's config saver, writing into the run directory (not the logger's) and into each checkpoint."""

    def __init__(self, parser, config, **kwargs):
        kwargs.update(save_to_log_dir=False)  # the logger's directory is not the run's: write in save_config
        super().__init__(parser, config, **kwargs)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        """Rank zero: `<trainer.default_root_dir>/config.yaml`, atomically (a kill or a full disk leaves the previous
        one whole)."""
        with atomic_path(RunDir(trainer.default_root_dir).config) as tmp:
            self.parser.save(self.config, str(tmp), skip_unset=False, overwrite=True, multifile=False)
        if trainer.loggers:
            import yaml

            resolved = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
            for logger in trainer.loggers:
                logger.log_hyperparams({"resolved_config": resolved})

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["config"] = self.parser.dump(self.config, skip_unset=False)
