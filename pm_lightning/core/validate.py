"""Every number and path a command takes, checked where it enters: one `Rule` per kind of value.

The same rule serves three doors: an argparse `type=` of every command's flags (`Parser` prints the refusal as one
line naming the flag and exits 2 before anything is imported or written), a jsonargparse type of fit's typed config
(`PositiveInt`, `Seed`, ... in the stage modules' and the data module's signatures: refused at parse time, also by
`--print_config`), and `Rule.check` in library code. Light on purpose: no torch, no Lightning.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from jsonargparse.typing import register_type

TOKEN_PX = 16  # one Flux latent token covers 16 x 16 px (VAE /8, 2x2 packing)


class Rule:
    """A number's kind and range: `kind` int or float, bounds `lo` / `hi` (inclusive; `lo_open`: lo excluded),
    `step` (a multiple of it), `extra` values allowed besides the range (e.g. -1 = no limit). Floats are finite."""

    def __init__(self, kind: type, lo=None, hi=None, *, lo_open: bool = False, step: int | None = None, extra=()):
        self.kind, self.lo, self.hi, self.lo_open, self.step, self.extra = kind, lo, hi, lo_open, step, tuple(extra)

    def describe(self) -> str:
        """The allowed values in words: "an integer >= 1", "a finite number > 0", "a multiple of 16 from 16 to 8192"."""
        noun = "an integer" if self.kind is int else "a finite number"
        if self.step:
            noun = f"a multiple of {self.step}"
        if self.lo is not None and self.hi is not None:
            text = f"{noun} > {self.lo} and <= {self.hi}" if self.lo_open else f"{noun} from {self.lo} to {self.hi}"
        elif self.lo is not None:
            text = f"{noun} {'>' if self.lo_open else '>='} {self.lo}"
        elif self.hi is not None:
            text = f"{noun} <= {self.hi}"
        else:
            text = noun
        return " or ".join([*(str(v) for v in self.extra), text])

    def ok(self, value) -> bool:
        """`value` (already of `kind`) is allowed."""
        if value in self.extra:
            return True
        if self.kind is float and not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return (self.hi is None or value <= self.hi) and (not self.step or value % self.step == 0)

    def parse(self, value):
        """`value` (text, or a number from YAML) as `kind`; ValueError "must be ..., got ..." when not allowed."""
        number = None
        if not isinstance(value, bool):
            try:
                number = self.kind(value)
                if self.kind is int and isinstance(value, float) and value != number:
                    number = None  # 2.5 is not an integer
            except (TypeError, ValueError, OverflowError):
                number = None
        if number is None or not self.ok(number):
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        return number

    def check(self, value, name: str):
        """Library use: `value` itself, or ValueError naming `name` and the allowed range."""
        try:
            return self.parse(value)
        except ValueError as err:
            raise ValueError(f"{name} {err}") from None

    def __call__(self, text: str):
        """argparse `type=`: the number, or ArgumentTypeError (argparse prefixes the flag's name)."""
        try:
            return self.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None


POSITIVE_INT = Rule(int, 1)
NON_NEGATIVE_INT = Rule(int, 0)
POSITIVE = Rule(float, 0, lo_open=True)
NON_NEGATIVE = Rule(float, 0)
FINITE = Rule(float)
FRACTION = Rule(float, 0, 1)
SEED = Rule(int, 0, 2**32 - 1)  # numpy's and Lightning's seed range; torch takes these too
SIDE = Rule(int, TOKEN_PX, 8192, step=TOKEN_PX)  # a picture or grid side in px: whole Flux tokens
FRAME_SIDE = Rule(int, 8, 4096)  # a frame side in px of the data commands (resized freely)
STEP_LIMIT = Rule(int, 1, extra=(-1,))  # Lightning's max_steps: -1 = no limit
SAMPLER_STEPS = Rule(int, 1, 1000)
GUIDANCE = Rule(float, 0, 100)
PORT = Rule(int, 1, 65535)
WORKERS = Rule(int, 1, 256)


# ---------------------------------------------------------------------------------------------- paths (argparse)


def existing_file(text: str) -> Path:
    """argparse `type=`: a file that exists."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{'is a folder, not a file' if path.is_dir() else 'no such file'}: {text}")
    return path


def existing_dir(text: str) -> Path:
    """argparse `type=`: a folder that exists."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{'is a file, not a folder' if path.exists() else 'no such folder'}: {text}")
    return path


def output_dir(text: str) -> Path:
    """argparse `type=`: where an output folder goes; refused when an existing file has that name (it would only
    fail after the whole computation)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file: give a folder for the outputs")
    return path


def output_file(text: str) -> Path:
    """argparse `type=`: where an output file goes; refused when a folder has that name, or its folder is a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file name")
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise argparse.ArgumentTypeError(f"{text}: a parent of it is a file, not a folder")
    return path


class Refused(SystemExit):
    """A command's refusal: exit code `code` (2: bad input, nothing written), its one line already on stderr; str()
    is that line."""

    def __init__(self, line: str, code: int = 2):
        super().__init__(code)
        self.line = line

    def __str__(self) -> str:
        return self.line


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, unless its help already says it or there is none to show (None, a switch,
    a required flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with one-line refusals: `prog: error: argument --flag: must be ..., got ... (--help lists the
    flags)`, exit code 2, before the command imports its library or writes anything; --help shows the defaults."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):
        refuse(self.prog, f"{message} (--help lists the flags)")


def refuse(prog: str, message, code: int = 2):
    """Exit like `Parser.error` from a command's main, after parsing: one line on stderr, exit code `code`."""
    line = f"{prog}: error: {' '.join(str(message).split())}"
    print(line, file=sys.stderr)
    raise Refused(line, code)


# ------------------------------------------------------------------------------------- fit's typed config (jsonargparse)


def config_type(name: str, rule: Rule) -> type:
    """A jsonargparse type for `rule`: values parse to plain int / float (checkpoints stay plain data), a bad one
    fails at parse time with the rule's words."""
    cls = type(name, (rule.kind,), {"__doc__": rule.describe(), "rule": rule})
    register_type(cls, serializer=rule.kind, deserializer=rule.parse, type_check=lambda v, t: False)
    return cls


PositiveInt = config_type("PositiveInt", POSITIVE_INT)
NonNegativeInt = config_type("NonNegativeInt", NON_NEGATIVE_INT)
PositiveFloat = config_type("PositiveFloat", POSITIVE)
NonNegativeFloat = config_type("NonNegativeFloat", NON_NEGATIVE)
FiniteFloat = config_type("FiniteFloat", FINITE)
Fraction = config_type("Fraction", FRACTION)
Seed = config_type("Seed", SEED)
Side = config_type("Side", SIDE)
StepLimit = config_type("StepLimit", STEP_LIMIT)
