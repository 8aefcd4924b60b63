"""The layout rule: the top level of pm_lightning/ is the commands, thin, importing only the library."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pm_lightning"
COMMANDS = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
LIBRARY = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == "pm_lightning":  # from pm_lightning import fit
                out |= {f"pm_lightning.{a.name}" for a in node.names}
    return out


def test_the_folders_are_the_library_by_role():
    assert LIBRARY == ["ablation", "core", "data", "demo", "eval", "inference", "models", "scaling", "tiny", "training"]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_top_level_module_is_a_command(command):
    source = (PACKAGE / f"{command}.py").read_text()
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{command}.py: a command's docstring is its --help"
    assert 'if __name__ == "__main__":' in source, f"{command}.py is not runnable as python -m pm_lightning.{command}"
    assert len(source.splitlines()) <= 120, f"{command}.py is not a thin wrapper ({len(source.splitlines())} lines)"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_command(path):
    commands = {f"pm_lightning.{c}" for c in COMMANDS}
    assert not imported_modules(path) & commands, f"{path.relative_to(PACKAGE)} imports a command module"


def test_one_name_per_thing():
    """No library module shares its name with a command or with a module in another folder."""
    stems: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.stem != "__init__":
            stems.setdefault(path.stem, []).append(str(path.relative_to(PACKAGE)))
    assert {k: v for k, v in stems.items() if len(v) > 1} == {}


@pytest.mark.slow
def test_the_package_imports_outside_the_repository(tmp_path):
    """Nothing is read from the current directory at import time; a missing project home is a clear error."""
    code = (
        "import pm_lightning.training.cli, pm_lightning.inference.session, pm_lightning.models.encoders\n"
        "import pm_lightning.core.paths as p\n"
        "p._looks_like_home = lambda path: False\n"
        "try:\n    p.tiny_flux_dir()\nexcept p.ProjectFilesNotFound as e:\n    print('ERR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PM_LIGHTNING_HOME"}  # a set home would be found, not missed
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERR" in proc.stdout and "PM_LIGHTNING_HOME" in proc.stdout
