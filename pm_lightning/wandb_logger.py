"""Weights & Biases through Lightning's WandbLogger, offline automatically when there are no credentials."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def has_wandb_credentials() -> bool:
    """True when an API key is in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(os.environ.get("WANDB_HOST", "api.wandb.ai")) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class AutoWandbLogger(WandbLogger):
    """WandbLogger that goes offline by itself without credentials (sync later with `wandb sync DIR`)."""

    def __init__(
        self,
        project: str = "pm_lightning",
        save_dir: str = "runs",
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        offline: bool | None = None,
        **kwargs,
    ):
        """
        Args:
            project: W&B project.
            save_dir: where the run folder goes (`<save_dir>/wandb/...`).
            name: run name.
            group: run group (the experiment), so ablation rows sit side by side.
            tags: run tags; when empty the CLI adds the adapter kind and the alignment setting.
            offline: None = offline exactly when no credentials are found.
        """
        self.auto_offline = not has_wandb_credentials() if offline is None else offline
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, name=name, group=group, tags=tags, offline=self.auto_offline, **kwargs)

    def describe_run(self, group: str | None, tags: list[str]) -> None:
        """Fill in group and tags before the run starts (no-op once the run exists)."""
        if self._experiment is not None:
            return
        if group and not self._wandb_init.get("group"):
            self._wandb_init["group"] = group
        self._wandb_init["tags"] = sorted(set(self._wandb_init.get("tags") or []) | set(tags))

    def run_location(self) -> str:
        """Where to look at the run: a URL online, the run folder offline."""
        if self._experiment is None:
            return "(no W&B run started)"
        run = self.experiment
        if self.auto_offline:
            return f"{run.dir.rsplit('/files', 1)[0]} (offline; upload with `wandb sync` on that folder)"
        return run.url or run.dir
