"""Atomic file writes: a temporary name beside the target, fsync, then one rename; the previous file survives any
failure (a full disk, a kill -9 at any byte, a crash of the machine after the rename)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WriteFailed(OSError):
    """Writing an output failed; the message names the file and says the previous version is intact."""


def _fsync(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; write it inside the block; it replaces `path` when the block succeeds.

    The temporary file lies in the target's own folder (never TMPDIR, which may be another filesystem: a rename
    across filesystems is a copy, and a copy can be cut half-way), is flushed to disk (fsync) before `os.replace`,
    and the folder is synced after it. A failure (disk full, a write error, an exception, a kill) leaves `path` as
    it was: the temporary file is removed on errors, and a kill leaves at most a `.<name>.tmp-<pid>` file beside it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself reaches the disk
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, WriteFailed):
            raise
        raise WriteFailed(f"writing {path} failed ({err}); the previous {path.name}, if any, is intact") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
