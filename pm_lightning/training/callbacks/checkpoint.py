"""Checkpoints inside the run directory, and always one at the end of a run."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint

from pm_lightning.core.atomic import WriteFailed
from pm_lightning.core.run_layout import RunDir
from pm_lightning.training.checkpoint_io import use_atomic_saves


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes to `<trainer.default_root_dir>/checkpoints` and keeps a resumable `last.ckpt`.

    Lightning's own default directory comes from the first logger (`<save_dir>/<project>/<run id>/checkpoints`
    for W&B: a new folder per run, so `--ckpt_path last` could not find it); here it follows the run directory,
    so `--trainer.default_root_dir DIR` moves it with everything else. With `save_last`, Lightning (>= 2.5.3) also
    writes `last.ckpt` when training ends, so a run shorter than `every_n_train_steps` can still be resumed
    (tests/test_run_dir.py).
    """

    def __init__(self, dirpath: str | None = None, save_last: bool = True, **kwargs):
        """
        Args:
            dirpath: where checkpoints go (default `<trainer.default_root_dir>/checkpoints`).
            save_last: keep `last.ckpt` (a copy of the newest checkpoint, also written at the end of training).
            **kwargs: the other `lightning.pytorch.callbacks.ModelCheckpoint` arguments (every_n_train_steps,
                save_top_k, monitor, filename, ...).
        """
        super().__init__(dirpath=dirpath, save_last=save_last, **kwargs)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """Lightning's save, made atomic on any filesystem (`training/checkpoint_io.py`: a failed or killed write
        never replaces a good file), with a failure that names the file. Overrides a protected ModelCheckpoint method (tests/test_compat.py checks it still exists)."""
        try:
            super()._save_checkpoint(trainer, filepath)
        except OSError as err:
            raise WriteFailed(
                f"writing checkpoint {filepath} failed ({err}); the earlier checkpoints are intact: the run stops here"
            ) from err

    def setup(self, trainer, pl_module, stage: str) -> None:
        use_atomic_saves(trainer.strategy)  # temporary file beside the checkpoint, fsync, os.replace
        if self.dirpath is None:
            self.dirpath = str(RunDir(trainer.default_root_dir).checkpoints)
        super().setup(trainer, pl_module, stage)
