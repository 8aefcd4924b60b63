"""One run directory per run: what is in it, refusing to start a new run over an old one, starting over."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

# Everything a run writes lives under its directory (trainer.default_root_dir):
#   checkpoints/  (RunCheckpoint)   lora/  (LoraExport)   samples/  (SampleGrids, EvaluationCallback)
#   wandb/  (AutoWandbLogger)       config.yaml  (SaveConfigWithCheckpoints)
RUN_OUTPUTS = ("checkpoints", "lora", "samples", "wandb", "config.yaml")


class RunDirectoryInUse(RuntimeError):
    """A new run would start in a directory that holds another run's checkpoints."""


def earlier_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint files of an earlier run in `root` (any depth under `checkpoints/`)."""
    folder = Path(root) / "checkpoints"
    return sorted(folder.rglob("*.ckpt")) if folder.is_dir() else []


def resolve_ckpt_path(ckpt_path: str | None, root: str | Path) -> str | None:
    """`--ckpt_path`: "last" is `<root>/checkpoints/last.ckpt`; a path stays as is.

    Resolved here rather than by Lightning, whose "last" looks in the first logger's folder (for W&B a new folder
    per run) when the checkpoint callback has no explicit dirpath. Lightning writes a step's checkpoint and then
    `last.ckpt`: a run killed between the two has no `last.ckpt` but a complete newer checkpoint, so "last" then
    means the newest checkpoint of the run (said on stderr). No checkpoint at all is a clear error.
    """
    if ckpt_path != "last":
        return ckpt_path
    last = Path(root) / "checkpoints" / "last.ckpt"
    if last.is_file():
        return str(last)
    found = [p for p in earlier_checkpoints(root) if not p.name.startswith(".")]
    if not found:
        raise FileNotFoundError(f"--ckpt_path last: no {last} (nothing to resume in run directory {root})")
    newest = max(found, key=lambda p: (p.stat().st_mtime_ns, p.name))
    print(
        f"--ckpt_path last: no {last.name} (the run stopped while writing it); resuming from {newest}", file=sys.stderr
    )
    return str(newest)


def is_launch_process() -> bool:
    """True in the process a user started (not a DDP child or a non-zero torchrun rank)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") == "0"


def check_run_directory(root: str | Path, resuming: bool, start_over: bool) -> Path | None:
    """Before any work: refuse a new run over an earlier run's checkpoints, or move that run aside.

    Returns where the earlier run was moved (start_over), else None. Raises RunDirectoryInUse naming the
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
            f"  start over:     add --start_over true (the earlier run is moved to {root}.prev-<time>, not deleted)\n"
            f"  or run elsewhere: --trainer.default_root_dir DIR"
        )
    moved = root.with_name(f"{root.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(root), str(moved))
    return moved
