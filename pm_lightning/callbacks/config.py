"""The resolved config: saved in the run directory (LightningCLI) and inside every checkpoint."""

from __future__ import annotations

from lightning.pytorch.cli import SaveConfigCallback


class SaveConfigWithCheckpoints(SaveConfigCallback):
    """LightningCLI's config saver that also writes the resolved YAML into each checkpoint."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["config"] = self.parser.dump(self.config, skip_none=False)
