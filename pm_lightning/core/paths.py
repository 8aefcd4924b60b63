"""Where the project's own files are: the embedded tiny models (`data/tiny-flux`, `data/tiny-eval`) and
the experiment configs (`experiments/*.yaml`), resolved here and nowhere else.

One setting, the environment variable PM_LIGHTNING_HOME: a pm_lightning checkout (or any folder holding
`data/tiny-flux`, `data/tiny-eval`, `experiments/`). Unset, the checkout this package was installed from
(an editable install) is used, else the current directory when it holds those folders. Nothing here is
read at import time, so an installed package imports anywhere and fails only when a file is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "PM_LIGHTNING_HOME"
_MARKERS = ("experiments", "data/tiny-flux", "data/tiny-eval")


class ProjectFilesNotFound(FileNotFoundError):
    """The project folder (embedded tiny models, experiment configs) could not be found."""


def _looks_like_home(path: Path) -> bool:
    return any((path / marker).exists() for marker in _MARKERS)


def project_home() -> Path:
    """The folder holding `data/tiny-flux`, `data/tiny-eval` and `experiments/`; a clear error when none is found."""
    if os.environ.get(ENV):
        home = Path(os.environ[ENV]).expanduser().resolve()
        if not home.is_dir():
            raise ProjectFilesNotFound(
                f"{ENV}={os.environ[ENV]!r} is not a directory: point it at a pm_lightning checkout"
            )
        return home
    checkout = Path(__file__).resolve().parents[2]  # <checkout>/pm_lightning/core/paths.py
    for candidate in (checkout, Path.cwd()):
        if _looks_like_home(candidate):
            return candidate
    raise ProjectFilesNotFound(
        f"pm_lightning's project files ({', '.join(_MARKERS)}) were not found next to the installed package "
        f"({checkout}) nor in the current directory ({Path.cwd()}): set {ENV} to a pm_lightning checkout "
        "(git clone it; `make tiny-base` / `make tiny-eval` rebuild the embedded models)"
    )


def tiny_flux_dir() -> Path:
    """The embedded tiny Flux pipeline (diffusers format), built by `make tiny-base`."""
    return project_home() / "data" / "tiny-flux"


def tiny_eval_dir() -> Path:
    """The embedded tiny evaluators (open_clip CLIP + patch tokens), built by `make tiny-eval`."""
    return project_home() / "data" / "tiny-eval"


def experiment_config(name: str) -> Path:
    """`experiments/<name>.yaml`, or a ProjectFilesNotFound naming it."""
    path = project_home() / "experiments" / f"{name}.yaml"
    if not path.is_file():
        raise ProjectFilesNotFound(f"experiment config {path} not found (set {ENV} to a pm_lightning checkout)")
    return path


def project_path(value: str | Path) -> Path:
    """A path from an experiment config: absolute as is, relative to the project home otherwise."""
    path = Path(value)
    return path if path.is_absolute() else project_home() / path


def portable(path: str | Path) -> str:
    """How a local path is written into a file others read (a model card, a LoRA header, report.json, the demo's
    page): relative to the current directory or the project home when under them, else the file name alone; never
    an absolute path of this machine."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    resolved = path.resolve()
    roots = [Path.cwd().resolve()]
    try:
        roots.append(project_home())
    except ProjectFilesNotFound:
        pass
    for root in roots:
        if resolved.is_relative_to(root):
            return resolved.relative_to(root).as_posix()
    return path.name
