"""`tools/pins.py`: environment.yml is generated from pyproject.toml, the Makefile's EXTRAS and constraints.txt, and
`--check` (in `make lint`) fails when any of them drifts from it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_pins():
    spec = importlib.util.spec_from_file_location("pins", ROOT / "tools" / "pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_environment_yml_agrees():
    """As `make lint` runs it: exit 0 on the repository."""
    out = subprocess.run([sys.executable, "tools/pins.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_environment_yml_holds_every_setup_extra_at_its_pin():
    """Conda reads it (valid YAML); its pip lines are pyproject's dependencies and the Makefile's extras at the
    constraints.txt versions, then the project with those extras."""
    pins = load_pins()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    constraints = pins.pinned()
    for line in pip[:-1]:
        name, version = line.split("==")
        assert constraints[pins.canonicalize_name(name.split("[")[0])] == version, line
    assert len(pip) - 1 == len(pins.requirements())
    assert {"gradio", "torchao", "tensorboard", "openai", "pytest"} <= {line.split("==")[0] for line in pip}
    assert pip[-1] == f"-e .[{','.join(pins.setup_extras())}]"


def test_check_fails_when_an_input_drifts(tmp_path, monkeypatch):
    """A new extra in the Makefile, or a constraints pin moved, without `--write`: --check names environment.yml.
    Checked red: the pre-change tools/pins.py (floors, EXTRAS fixed to judge + dev) fails these tests."""
    pins = load_pins()
    makefile = tmp_path / "Makefile"
    makefile.write_text(
        (ROOT / "Makefile").read_text().replace("EXTRAS  := dev,judge", "EXTRAS  := dev,mutation,judge")
    )
    monkeypatch.setattr(pins, "MAKEFILE", makefile)
    assert any("environment.yml differs" in p for p in pins.problems())
    monkeypatch.setattr(pins, "MAKEFILE", ROOT / "Makefile")
    moved = tmp_path / "constraints.txt"
    moved.write_text(pins.CONSTRAINTS.read_text().replace("tqdm==", "tqdm==99.").replace("scipy==", "scipy==0.0."))
    monkeypatch.setattr(pins, "CONSTRAINTS", moved)
    assert any("environment.yml differs" in p for p in pins.problems())
    assert any("DEPENDENCIES.md's generated table differs" in p for p in pins.problems())


def test_the_dependencies_doc_lists_every_requirement_at_its_pin(tmp_path, monkeypatch):
    """docs/DEPENDENCIES.md's generated table has a row per requirement of pyproject (extras included) at its
    constraints.txt version; a hand edit inside the markers is caught. Checked red: with the DOC comparison taken out of
    `problems()`, the edited table passed --check."""
    pins = load_pins()
    doc = pins.DOC.read_text()
    table = doc.split(pins.BEGIN, 1)[1].split(pins.END, 1)[0]
    constraints = pins.pinned()
    rows = [line.split(" | ") for line in table.strip().splitlines()[2:]]
    assert {pins.canonicalize_name(r[0].strip("| ")) for r in rows} >= {"torch", "scipy", "openai", "mutmut"}
    for row in rows:
        assert row[-1].strip(" |") == constraints[pins.canonicalize_name(row[0].strip("| "))], row
    edited = tmp_path / "DEPENDENCIES.md"
    edited.write_text(doc.replace("| scipy |", "| scipy-old |"))
    monkeypatch.setattr(pins, "DOC", edited)
    assert any("generated table differs" in p for p in pins.problems())
