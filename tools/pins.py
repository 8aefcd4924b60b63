"""Dependency files that must agree with pyproject.toml: constraints.txt (exact CI versions) and environment.yml.

environment.yml is a conda env file whose pip section holds every dependency and every extra `make setup` installs
(the Makefile's EXTRAS), each pinned to its constraints.txt version, then the project itself with those extras.

python tools/pins.py --write   # constraints.txt from this environment, environment.yml from pyproject + constraints
python tools/pins.py --check   # fail when either has drifted (make lint runs this)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
ENVIRONMENT = ROOT / "environment.yml"
MAKEFILE = ROOT / "Makefile"


def setup_extras() -> list[str]:
    """The extras `make setup` installs besides the dependencies: the Makefile's `EXTRAS := a,b,...` line."""
    found = re.search(r"^EXTRAS\s*:?=\s*(\S+)", MAKEFILE.read_text(), re.M)
    if found is None:
        raise SystemExit(f"{MAKEFILE}: no `EXTRAS := ...` line (the extras make setup installs)")
    return found.group(1).split(",")


def requirements() -> list[str]:
    """pyproject's dependencies and the extras `make setup` installs, in order."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *(r for extra in setup_extras() for r in extras[extra])]


def pinned_requirement(text: str, pins: dict[str, str]) -> str:
    """`name[extras]==version` from constraints.txt (the requirement as written when it has no pin: --check says so)."""
    req = Requirement(text)
    version = pins.get(canonicalize_name(req.name))
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}=={version}" if version else text


def environment_yml() -> str:
    """environment.yml generated from pyproject.toml, the Makefile's EXTRAS and constraints.txt."""
    pins = pinned()
    lines = [
        "# Generated from pyproject.toml, the Makefile's EXTRAS and constraints.txt by `python tools/pins.py --write`;",
        "# `make lint` fails when it drifts. `conda env create -f environment.yml` installs what `make setup` does, the",
        "# direct dependencies at CI's versions (`pip install -c constraints.txt -e .` pins the rest too).",
        "name: pm_lightning",
        "channels: [conda-forge]",
        "dependencies:",
        "  - python=3.11",
        "  - pip",
        "  - pip:",
        *(f"      - {pinned_requirement(r, pins)}" for r in requirements()),
        f"      - -e .[{','.join(setup_extras())}]",
    ]
    return "\n".join(lines) + "\n"


def frozen() -> str:
    """This environment's exact versions (the editable project itself left out)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    )
    pins = sorted((line for line in out.stdout.splitlines() if "==" in line), key=str.lower)
    head = "# Exact versions CI tests (`make constraints` rewrites this from .venv); `make setup` installs with it.\n"
    return head + "\n".join(pins) + "\n"


def pinned() -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name.split("[")[0])] = version.strip()
    return pins


def problems() -> list[str]:
    """What disagrees: environment.yml vs pyproject, requirements without a pin or pinned below their floor."""
    found = []
    if ENVIRONMENT.read_text() != environment_yml():
        found.append(
            "environment.yml differs from pyproject.toml / constraints.txt: run `python tools/pins.py --write`"
        )
    pins = pinned()
    for text in requirements():
        req = Requirement(text)
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            found.append(f"constraints.txt has no pin for {req.name} (pyproject: {text})")
        elif not req.specifier.contains(version, prereleases=True):
            found.append(f"constraints.txt pins {req.name}=={version}, outside pyproject's {text!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--write", action="store_true", help="rewrite constraints.txt (from this environment) and environment.yml"
    )
    p.add_argument("--check", action="store_true", help="exit 1 when either file has drifted")
    args = p.parse_args(argv)
    if args.write:
        CONSTRAINTS.write_text(frozen())
        ENVIRONMENT.write_text(environment_yml())
        print(f"wrote {CONSTRAINTS.name} and {ENVIRONMENT.name}")
    found = problems()
    for line in found:
        print(f"pins: {line}", file=sys.stderr)
    return 1 if found and (args.check or args.write) else 0


if __name__ == "__main__":
    sys.exit(main())
