"""Progress bars: tqdm's, on stderr; off with a command's `--no-progress` or tqdm's own `TQDM_DISABLE=1`.

Every bar of the library comes from `progress_bar` (or, for a diffusers sampler, `pipeline_config`), which reads the
variable when the bar is made: tqdm itself reads `TQDM_*` only when it is imported (and an explicit `disable=`, as
diffusers passes, beats it), so a flag that sets the variable after start-up needs this. `--no-progress` sets the
variable too, so third-party bars in a fresh process (tqdm imported after parsing) follow it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable

from tqdm import tqdm

ENV = "TQDM_DISABLE"


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """`--no-progress` on a command's parser; `apply_progress_flag(args)` after parsing acts on it."""
    parser.add_argument("--no-progress", action="store_true", help=f"no progress bars (the same as {ENV}=1)")


def apply_progress_flag(args: argparse.Namespace) -> None:
    """`--no-progress`: every bar of this process off, as `TQDM_DISABLE=1` at start-up does."""
    if args.no_progress:
        os.environ[ENV] = "1"


def disabled() -> bool:
    """Bars off? As tqdm reads the variable: any non-empty value disables (tqdm casts it with `bool(str)`)."""
    return bool(os.environ.get(ENV))


def progress_bar(iterable: Iterable | None = None, *, desc: str, unit: str, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr named `desc`, counting `unit`s; off when `enabled` is False or `disabled()`."""
    return tqdm(iterable, desc=desc, unit=unit, disable=not enabled or disabled(), dynamic_ncols=True, **kwargs)


def pipeline_config(desc: str) -> dict:
    """`pipe.set_progress_bar_config(**...)`: a diffusers sampler bar named `desc` that follows `disabled()`."""
    return {"desc": desc, "disable": disabled(), "leave": False}
