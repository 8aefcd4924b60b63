"""Lightning's checkpoint saves through `core/atomic.py`: a temporary file in the checkpoint's own folder, fsync,
`os.replace`. Lightning's own save (an fsspec transaction) writes the temporary file into TMPDIR and moves it, which
is a copy when TMPDIR is another filesystem (tmpfs, a node-local disk under an NFS / Lustre run directory): a full
disk or a kill during that copy left a truncated `last.ckpt`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH

from pm_lightning.core.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are atomic on any TMPDIR; remote URLs (s3://, ...) keep Lightning's."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or "file" not in get_filesystem(path).protocol:
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()  # serialised first, as Lightning does: a failing write is then an OSError naming why
        torch.save(checkpoint, buffer)
        with atomic_path(path) as tmp:
            write_file(tmp, buffer.getbuffer())


def write_file(path: Path, data: memoryview) -> None:
    """Write `data` to `path` (the one place checkpoint bytes reach the disk)."""
    with open(path, "wb") as f:
        f.write(data)


def use_atomic_saves(strategy) -> None:
    """Give `strategy` the atomic checkpoint IO, unless a configured plugin brings its own (kept as it is)."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
