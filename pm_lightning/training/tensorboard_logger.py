"""TensorBoard as the run's logger (`--config experiments/loggers/tensorboard.yaml`): Lightning's TensorBoardLogger
with its event files in the run directory (`<run>/tensorboard/version_N`), so `--trainer.default_root_dir` moves them
with everything else; scalars through Lightning, sample grids through `log_images` (`training/logged_images.py`).
Look at a run with `tensorboard --logdir <run>/tensorboard`."""

from __future__ import annotations

import os

from lightning.pytorch.loggers import TensorBoardLogger

from pm_lightning.core.extras import require
from pm_lightning.core.run_layout import TENSORBOARD


class RunTensorBoardLogger(TensorBoardLogger):
    """TensorBoardLogger whose `save_dir` is the run directory unless given (set by the CLI before the run starts)."""

    def __init__(
        self,
        save_dir: str | None = None,
        name: str = TENSORBOARD,
        version: int | str | None = None,
        default_hp_metric: bool = False,
        **kwargs,
    ):
        """
        Args:
            save_dir: where the `name/version_N` folders go; None = the run directory (`trainer.default_root_dir`).
            name: the folder under `save_dir`.
            version: None = the next free `version_N` (a resumed run gets its own version; TensorBoard shows them
                side by side, the steps continuing).
            default_hp_metric: Lightning's placeholder `hp_metric` scalar (off: it would mean nothing here).
            **kwargs: the rest of Lightning's TensorBoardLogger (`log_graph`, `prefix`, `sub_dir`, SummaryWriter's).
        """
        require("tensorboard", "the TensorBoard logger (experiments/loggers/tensorboard.yaml)")
        super().__init__(
            save_dir=save_dir or ".", name=name, version=version, default_hp_metric=default_hp_metric, **kwargs
        )
        self.run_dir = save_dir or "."
        self.explicit_save_dir = save_dir is not None

    def use_run_dir(self, run_dir: str) -> None:
        """Write under the run directory unless `save_dir` was given (before the first event is written)."""
        if self._experiment is None and not self.explicit_save_dir:
            self.run_dir = run_dir

    @property
    def save_dir(self) -> str:
        """The run directory (or the `save_dir` given)."""
        return self.run_dir

    @property
    def root_dir(self) -> str:
        """`<save_dir>/<name>`: the parent of the `version_N` folders."""
        return os.path.join(self.save_dir, self.name)
