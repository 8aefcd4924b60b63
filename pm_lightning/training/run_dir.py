"""One run directory per run: which checkpoint a resume uses, refusing to start a new run over an old one, starting
over (what is in it: `core/run_layout.py`; the lock that keeps a second run out: `training/run_lock.py`)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pm_lightning.core.run_layout import RunDir


class RunDirectoryInUse(RuntimeError):
    """A new run would start in a directory that holds another run's checkpoints."""


class UnreadableCheckpoint(RuntimeError):
    """The checkpoint to resume from cannot be read (and, for `last`, no intact one is left)."""


def earlier_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint files of an earlier run in `root` (any depth under `checkpoints/`; temporary files left out)."""
    folder = RunDir(root).checkpoints
    found = sorted(folder.rglob("*.ckpt")) if folder.is_dir() else []
    return [p for p in found if not p.name.startswith(".")]


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when torch reads it back (tensors and plain data only,
    memory-mapped: the tensors are not read into memory). A folder (a distributed checkpoint) is its
    strategy's to read."""
    import pickle

    import torch

    if path.is_dir():
        return None

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return "it holds objects other than tensors and plain data: refused unread"
    except Exception as err:  # noqa: BLE001 - truncated zip, bad pickle, I/O errors alike
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        return f"{type(err).__name__}: {first}" if first else type(err).__name__
    return None


def resolve_ckpt_path(ckpt_path: str | None, root: str | Path) -> tuple[str | None, list[str]]:
    """`--ckpt_path` -> (the checkpoint to resume from, notices for stderr).

    "last" means the newest intact checkpoint of `<root>/checkpoints` (resolved here rather than by Lightning, whose
    "last" looks in the first logger's folder): `last.ckpt`, else the newest other one, each checked to load; a
    damaged one is skipped, saying which and why. With no checkpoint at all (a run killed before its first one, or
    a requeued job that always passes `last`) it is None: the run starts from the beginning, with a notice. A path
    must exist and load. UnreadableCheckpoint / FileNotFoundError otherwise, naming the file.
    """
    if ckpt_path is None:
        return None, []
    if ckpt_path != "last":
        path = Path(ckpt_path)
        if not path.exists():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such file")
        if problem := checkpoint_problem(path):
            hint = _newest_intact(root)
            raise UnreadableCheckpoint(
                f"--ckpt_path {ckpt_path} cannot be read ({problem})"
                + (f"; the newest intact checkpoint of {root} is {hint}: --ckpt_path last resumes it" if hint else "")
            )
        return str(path), []
    last = RunDir(root).last_checkpoint
    others = sorted(
        (p for p in earlier_checkpoints(root) if p != last), key=lambda p: (_mtime_ns(p), p.name), reverse=True
    )
    candidates = ([last] if last.exists() or last.is_symlink() else []) + others  # a dangling link: said, skipped
    if not candidates:
        return None, [f"--ckpt_path last: no checkpoint in {root} yet (the run stopped before its first one): "
                      "starting from the beginning"]  # fmt: skip
    skipped = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            why = "; ".join(skipped) or f"no {last.name} (the run stopped while writing it)"
            return str(path), [] if path == last else [f"--ckpt_path last: {why}; resuming from {path}"]
        skipped.append(f"{path.name} cannot be read ({problem})")
    raise UnreadableCheckpoint(
        f"--ckpt_path last: no checkpoint of {root} can be read ({'; '.join(skipped)}): start over with "
        "--start_over true (the damaged run is moved aside, not deleted)"
    )


def _newest_intact(root: str | Path) -> Path | None:
    found = sorted(earlier_checkpoints(root), key=_mtime_ns, reverse=True)
    return next((p for p in found if checkpoint_problem(p) is None), None)


def _mtime_ns(path: Path) -> int:
    """The file's modification time; a dangling symlink's own (its target is gone: checkpoint_problem says so)."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return path.lstat().st_mtime_ns


def is_launch_process() -> bool:
    """True in the process a user started (not a DDP child or a non-zero torchrun rank)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") == "0"


def check_run_directory(root: str | Path, resuming: bool, start_over: bool) -> Path | None:
    """Before any work (the run directory locked): refuse a new run over an earlier run's checkpoints, or move that
    run's outputs aside.

    Returns where the earlier run's outputs were moved (start_over), else None. Raises RunDirectoryInUse naming the
    directory and both ways forward.
    """
    root = Path(root)
    if resuming or not is_launch_process():  # DDP children start after the launcher has checked (or moved)
        return None
    found = earlier_checkpoints(root)
    if not found:
        return None
    if not start_over:
        shown = ", ".join(str(p.relative_to(root)) for p in found[:3]) + (" ..." if len(found) > 3 else "")
        raise RunDirectoryInUse(
            f"run directory {root} already holds another run's checkpoints ({shown}).\n"
            f"  resume it:      add --ckpt_path last\n"
            f"  start over:     add --start_over true (the earlier run's outputs move to {aside_path(root, '<time>')}, not deleted)\n"
            f"  or run elsewhere: --trainer.default_root_dir DIR"
        )
    aside = aside_path(root)
    aside.mkdir(parents=True)
    for path in RunDir(root).outputs():
        if path.exists():
            shutil.move(str(path), str(aside / path.name))
    return aside


def aside_path(root: Path, stamp: str | None = None) -> Path:
    """Where start_over moves an earlier run's outputs: `<dir>.prev-<time>` beside a named run directory; inside
    the current directory (`prev-<time>/`) when the run directory is the current directory (the default root `.`),
    whose parent is not ours to write in."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    resolved = root.resolve()
    if resolved == Path.cwd().resolve() or not resolved.name:
        return resolved / f"prev-{stamp}"
    return resolved.with_name(f"{resolved.name}.prev-{stamp}")
