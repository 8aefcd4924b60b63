"""The commands of a markdown page's fenced blocks, read as a shell would, and what they name: make targets and
variables, `pm_lightning` commands and their flags (from each command's own argparse parser), venv executables,
repository files, run directories. Used by tests/test_readme.py."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = ".venv/bin/"
SHIPPED = ("experiments/", "docs/", "data/tiny-flux", "data/tiny-eval", "bench/", "tools/")
"""Paths under these prefixes ship with the repository: a command naming one needs it to exist."""


@dataclass(frozen=True)
class Command:
    """One command line of a fenced block: its words (comments and line continuations removed)."""

    argv: tuple[str, ...]
    text: str

    @property
    def module(self) -> str | None:
        """`X` of `.venv/bin/python -m pm_lightning.X ...`, else None."""
        if len(self.argv) > 2 and self.argv[:2] == (f"{VENV_BIN}python", "-m"):
            return self.argv[2].removeprefix("pm_lightning.") if self.argv[2].startswith("pm_lightning.") else None
        return None

    @property
    def args(self) -> list[str]:
        """The arguments after the module (or after make / the executable)."""
        return list(self.argv[3:] if self.module else self.argv[1:])

    def values(self, flag: str) -> list[str]:
        """Every value given to `flag` (`--flag v` or `--flag=v`; all words up to the next flag for nargs)."""
        out, words = [], self.args
        for i, w in enumerate(words):
            if w == flag:
                out += [v for v in _until_flag(words[i + 1 :])]
            elif w.startswith(flag + "="):
                out.append(w.split("=", 1)[1])
        return out


def _until_flag(words: list[str]) -> list[str]:
    taken = []
    for w in words:
        if w.startswith("--"):
            break
        taken.append(w)
    return taken


def fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def commands(text: str, languages: tuple[str, ...] = ("bash", "sh", "")) -> list[Command]:
    """Every command line of the shell blocks, continuation lines joined."""
    out = []
    for lang, body in fenced(text):
        if lang not in languages:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                out.append(Command(tuple(argv), line.strip()))
    return out


def python_strings(text: str) -> list[str]:
    """String literals of the python blocks (the paths and model ids they load)."""
    bodies = [body for lang, body in fenced(text) if lang == "python"]
    return [s for body in bodies for s in re.findall(r"\"([^\"]*)\"", body)]


# ------------------------------------------------------------------------------------------------ make


def make_targets(makefile: Path = REPO / "Makefile") -> set[str]:
    """Targets defined in the Makefile (rules `name:` at the start of a line)."""
    return set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", makefile.read_text(), flags=re.M))


def make_variable_used(name: str, makefile: Path = REPO / "Makefile") -> bool:
    """Whether the Makefile reads variable `name` (`$(NAME)` or `origin NAME`)."""
    text = makefile.read_text()
    return f"$({name})" in text or f"origin {name})" in text


# --------------------------------------------------------------------------------------------- commands


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parsed")
        self.parser = parser


def command_parser(module: str) -> argparse.ArgumentParser:
    """The argparse parser a command builds, caught at its parse_args (nothing of the command runs after it)."""

    def capture(self, args=None, namespace=None):
        raise _Parsed(self)

    mod = importlib.import_module(f"pm_lightning.{module}")
    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            mod.main([])
        except _Parsed as done:
            return done.parser
    raise AssertionError(f"pm_lightning.{module}.main never called parse_args")


def flag_problems(command: Command, parser: argparse.ArgumentParser) -> list[str]:
    """Flags of `command` its parser does not know, and values outside a flag's choices."""
    problems, words = [], command.args
    for i, word in enumerate(words):
        if not word.startswith("--"):
            continue
        flag, _, inline = word.partition("=")
        action = parser._option_string_actions.get(flag)
        if action is None:
            problems.append(f"{command.module}: unknown flag {flag}")
            continue
        value = inline or (words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None)
        if action.choices is not None and value is not None and action.type in (None, str, int):
            typed = action.type(value) if action.type else value
            if typed not in action.choices:
                problems.append(f"{command.module}: {flag} {value!r} is not one of {list(action.choices)}")
    return problems


# ------------------------------------------------------------------------------------------ paths, runs


def shipped_paths(words: list[str]) -> list[str]:
    """Words that name a file of the repository (a config, a doc, the embedded models)."""
    return [w.split(":")[0] for w in words if w.startswith(SHIPPED)]


def run_dirs() -> dict[str, str]:
    """{run directory: base} of every experiment config (the run a training command writes, the base it uses)."""
    out = {}
    for path in (REPO / "experiments").rglob("*.yaml"):
        cfg = yaml.safe_load(path.read_text()) or {}
        root = (cfg.get("trainer") or {}).get("default_root_dir")
        if root:
            out[root] = ((cfg.get("model") or {}).get("init_args") or {}).get("base", "tiny")
    return out


def run_of(path: str, runs: dict[str, str]) -> str | None:
    """The run directory `path` lies in, or None."""
    return next((r for r in runs if path == r or path.startswith(r.rstrip("/") + "/")), None)
