"""One run per directory: `<run dir>/run.lock` (pid, host, start time) held with an OS lock for the whole run.

The OS lock (`fcntl.flock`, also honoured over NFS v4) ends with its process, however it ends, so a lock file left by
a run killed with -9 is stale and taken over with a notice; a live one refuses a second run at once, before any
work. Where the filesystem has no locks, a lock file of this host whose pid is gone is stale; any other is live.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from pm_lightning.core.run_layout import RunDir


class RunDirectoryLocked(RuntimeError):
    """Another run, alive, holds the run directory."""


def _holder(text: str) -> dict:
    try:
        info = json.loads(text)
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def _describe(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if "started" in info else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {started}"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's process, or no pid: not provably dead
    return True


class RunLock:
    """The lock of one run directory, held by this process until `release()` (or its exit)."""

    def __init__(self, root: Path, fd: int, created_root: bool, stale: dict | None):
        self.root, self.fd, self.created_root, self.stale = root, fd, created_root, stale
        self.path = RunDir(root).lock

    @classmethod
    def acquire(cls, root: str | Path) -> RunLock:
        """Take the lock of `root` (created when missing), or raise RunDirectoryLocked naming the live holder."""
        root = Path(root)
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        path = RunDir(root).lock
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            previous = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            try:
                locked_by_os = _flock(fd)
            except BlockingIOError:
                os.close(fd)
                raise RunDirectoryLocked(_refusal(root, path, previous)) from None
            if _same_file(fd, path):
                break
            os.close(fd)  # the holder released (and removed) the file between our open and our lock: again
        if (
            not locked_by_os
            and previous
            and (previous.get("host") != socket.gethostname() or _pid_alive(previous.get("pid")))
        ):
            os.close(fd)
            raise RunDirectoryLocked(_refusal(root, path, previous))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        return cls(root, fd, created, previous or None)

    def stale_notice(self) -> str | None:
        """What was taken over, when the lock file was left by a run that is gone."""
        if not self.stale:
            return None
        return f"run directory {self.root}: the lock of a run that is gone ({_describe(self.stale)}) was taken over"

    def release(self) -> None:
        """Remove the lock file (it is ours) and, when this run created the directory and left it empty, that too."""
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None
        if self.created_root and self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()


def _flock(fd: int) -> bool:
    """Take the OS lock (BlockingIOError when held); False where the filesystem has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        raise
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _refusal(root: Path, path: Path, holder: dict) -> str:
    return (
        f"run directory {root} is in use by another run ({_describe(holder)}): one run per directory. Wait for it, "
        f"or use another --trainer.default_root_dir; if that run is gone on another machine, delete {path}"
    )
