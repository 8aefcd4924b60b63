"""Weights & Biases through Lightning's WandbLogger: offline by itself without credentials, and offline as a
fallback when the server cannot be reached in time (the run goes on; sync later with `wandb sync DIR`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from pm_lightning.core.compat import set_wandb_dir, wandb_init_kwargs
from pm_lightning.core.run_layout import RunDir

log = logging.getLogger(__name__)


def has_wandb_credentials() -> bool:
    """wandb's own login state for the configured server (WANDB_BASE_URL, default api.wandb.ai): a key in
    WANDB_API_KEY or in the netrc entry `wandb login` writes for that host. Never prompts, never contacts the server."""
    # lazy: wandb, imported where used (docs STYLE 8), 0.7 s (docs/ARCHITECTURE.md, "Start-up")
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception as err:  # noqa: BLE001 - no usable credentials is an answer, not a crash
        log.info("W&B: no usable credentials (%s): logging offline", err)
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
        init_timeout: float = 60.0,
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
            offline: None = offline exactly when wandb finds no credentials for its server (WANDB_BASE_URL).
            init_timeout: seconds to wait for the W&B server when the run starts; past it (or on any error there)
                the run goes on offline and says so.
        """
        self.auto_offline = not has_wandb_credentials() if offline is None else offline
        self.explicit_save_dir = save_dir is not None
        self.fallback: str | None = None  # why the run went offline after trying online, if it did
        if self.auto_offline and kwargs.get("mode") is None:
            # explicit: Lightning's WANDB_MODE=dryrun is ignored once wandb's session has started (the login check)
            kwargs["mode"] = "offline"
        if not self.auto_offline and kwargs.get("settings") is None:  # the CLI passes settings=None explicitly
            # lazy: wandb, imported where used (docs STYLE 8), 0.7 s (docs/ARCHITECTURE.md, "Start-up")
            import wandb

            kwargs["settings"] = wandb.Settings(init_timeout=init_timeout)
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

    def continue_run(self) -> str | None:
        """On a resume (`--ckpt_path`): continue the run directory's latest online W&B run (its id, with Lightning's
        `resume="allow"`) so the curves go on in one run instead of a new one per restart. Returns the id, or None:
        no earlier online run, or this run is offline (wandb cannot append one offline run to another: two offline
        folders of one id replace each other on `wandb sync`, wandb/wandb#3841; each part stays its own run)."""
        init = wandb_init_kwargs(self)
        if self._experiment is not None or self.auto_offline or init.get("id") or not self.save_dir:
            return None
        earlier = sorted(RunDir(self.save_dir).wandb.glob("run-*-*"), key=lambda p: p.name)
        if not earlier:
            return None
        init["id"] = earlier[-1].name.split("-", 2)[2]  # run-<YYYYMMDD_HHMMSS>-<id>
        return init["id"]

    @property
    def experiment(self):
        """The W&B run, started on first use in a directory that exists; offline when the server fails to answer."""
        if self._experiment is None and self.save_dir:
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
        try:
            return super().experiment
        except Exception as err:  # noqa: BLE001 - wandb raises CommError, UsageError, timeouts...: all mean "not now"
            if self._offline or self._experiment is not None:
                raise
            host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            self.fallback = (
                f"W&B server {host} did not start the run ({type(err).__name__}: {str(err).splitlines()[0]})"
            )
            log.warning("%s: logging offline instead; upload later with `wandb sync` on the run folder", self.fallback)
            self._offline = self.auto_offline = True
            init = wandb_init_kwargs(self)
            init["mode"] = "offline"
            init.pop("settings", None)
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
            why = f"; {self.fallback}" if self.fallback else ""
            return f"{run.dir.rsplit('/files', 1)[0]} (offline{why}; upload with `wandb sync` on that folder)"
        return run.url or run.dir
