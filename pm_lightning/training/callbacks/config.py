"""The resolved config: saved as `<run dir>/config.yaml` (LightningCLI) and inside every checkpoint."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import SaveConfigCallback

CONFIG_NAME = "config.yaml"


class SaveConfigWithCheckpoints(SaveConfigCallback):
    """LightningCLI's config saver, writing into the run directory (not the logger's) and into each checkpoint."""

    def __init__(self, parser, config, **kwargs):
        kwargs.update(save_to_log_dir=False)  # the logger's directory is not the run's: write in save_config
        super().__init__(parser, config, **kwargs)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        """Rank zero: `<trainer.default_root_dir>/config.yaml`."""
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(root / CONFIG_NAME), skip_unset=False, overwrite=True, multifile=False)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["config"] = self.parser.dump(self.config, skip_unset=False)
