"""`python -m pm_lightning.<command> --help` for every command at the top of pm_lightning/: exit 0, no warning on
stderr, every flag with help text, usage in the `python -m` form. Not timed (speed targets live in bench/): the
wall time of each is printed (`-s`) and docs/ARCHITECTURE.md ("Start-up") holds the measured figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(p.stem for p in (ROOT / "pm_lightning").glob("*.py") if p.stem != "__init__")
FIT_OWN = ("--experiment", "--ckpt_path", "--validate_first", "--start_over")  # the flags fit adds to LightningCLI's


def run_help(command: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"}  # show every warning, none filtered
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", f"pm_lightning.{command}", "--help"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    return out, time.perf_counter() - start


def flag_entries(help_text: str) -> dict[str, str]:
    """{first option string: its help text} from argparse's layout: an entry starts at two spaces and a dash; its help
    follows on the same line after two or more spaces, or on the lines indented below it."""
    entries, current = {}, None
    for line in help_text.splitlines():
        if m := re.match(r"^  (-[\w-]+|--[\w.-]+)(.*)$", line):
            current = m.group(1)
            rest = re.split(r"\s{2,}", m.group(2), maxsplit=1)
            entries[current] = rest[1] if len(rest) > 1 else ""
        elif current and re.match(r"^\s{6,}\S", line):
            entries[current] = (entries[current] + " " + line.strip()).strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", COMMANDS)
def test_help_answers_without_warnings_and_every_flag_has_help(command):
    """Checked red: a flag without help (`p.add_argument("--x")` added to synth) failed the help assertion, and
    `fit` before its entry point filtered torch's `register_constant` notices failed the stderr assertion."""
    out, seconds = run_help(command)
    print(f"{command} --help: {seconds:.2f} s")
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr.lower() and "deprecat" not in out.stderr.lower(), out.stderr
    assert out.stdout.startswith(f"usage: python -m pm_lightning.{command} "), out.stdout[:120]
    entries = flag_entries(out.stdout)
    flags = FIT_OWN if command == "fit" else [f for f in entries if f not in ("-h", "--help")]
    assert flags, f"{command}: no flags found in --help"
    missing = [f for f in flags if not entries.get(f)]
    assert not missing, f"{command}: flags without help text: {missing}"


def test_defaults_are_shown_once():
    """The formatter adds `(default: X)` where the help does not say it already (and not for None or a switch)."""
    from pm_lightning.core.validate import Parser

    p = Parser(prog="x")
    p.add_argument("--a", type=int, default=3, help="a count")
    p.add_argument("--b", default="s", help="b (default: the config's)")
    p.add_argument("--c", default=None, help="c")
    p.add_argument("--d", action="store_true", help="d")
    entries = flag_entries(p.format_help())
    assert entries == {"-h": "show this help message and exit", "--a": "a count (default: 3)",
                       "--b": "b (default: the config's)", "--c": "c", "--d": "d"}  # fmt: skip
