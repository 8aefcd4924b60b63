"""Optional parts (not needed to train or sample): imported where used, with an install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> the pyproject extra that installs it
EXTRAS = {
    "openai": "judge",
    "gradio": "demo",
    "torchao": "quant",
    "tensorboard": "tensorboard",
    "submitit": "slurm",
}


class MissingExtra(ImportError):
    """An optional dependency is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """Import `module`, or raise MissingExtra saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(module)
        hint = f"pip install 'pm_lightning[{extra}]'" if extra else f"pip install {module}"
        raise MissingExtra(f"{purpose} needs the optional package {module!r}: {hint}") from err
