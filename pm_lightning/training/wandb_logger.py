"""Weights & Biases through Lightning's WandbLogger, offline automatically when there are no credentials."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from pm_lightning.core.compat import set_wandb_dir, wandb_init_kwargs


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
        save_dir: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        offline: bool | None = None,
        **kwargs,
    ):
        """
        Args:
            project: W&B project.
            save_dir: where the W&B files go (`<save_dir>/wandb/...`); None = the run directory
                (`trainer.default_root_dir`, set by the CLI), so a moved run directory moves them too.
            name: run name.
            group: run group (the experiment), so ablation rows sit side by side.
            tags: run tags; when empty the CLI adds the adapter kind and the alignment setting.
            offline: None = offline exactly when no credentials are found.
        """
        self.auto_offline = not has_wandb_credentials() if offline is None else offline
        self.explicit_save_dir = save_dir is not None
        super().__init__(
            project=project, save_dir=save_dir, name=name, group=group, tags=tags, offline=self.auto_offline, **kwargs
        )

    def use_run_dir(self, run_dir: str) -> None:
        """Put the W&B files under the run directory unless `save_dir` was given (before the run starts)."""
        if self._experiment is None and not self.explicit_save_dir:
            set_wandb_dir(self, run_dir)

    def describe_run(self, group: str | None, tags: list[str]) -> None:
        """Fill in group and tags before the run starts (no-op once the run exists)."""
        if self._experiment is not None:
            return
        init = wandb_init_kwargs(self)
        if group and not init.get("group"):
            init["group"] = group
        init["tags"] = sorted(set(init.get("tags") or []) | set(tags))

    @property
    def experiment(self):
        """The W&B run, started on first use, in a directory that exists."""
        if self._experiment is None and self.save_dir:
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
        return super().experiment

    def close(self) -> None:
        """Finish the W&B run (flushes its files), so nothing more is written into it after the fit."""
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish()

    def run_location(self) -> str:
        """Where to look at the run: a URL online, the run folder offline."""
        if self._experiment is None:
            return "(no W&B run started)"
        run = self.experiment
        if self.auto_offline:
            return f"{run.dir.rsplit('/files', 1)[0]} (offline; upload with `wandb sync` on that folder)"
        return run.url or run.dir
