"""`core/validate.py`: one rule per kind of value, the same words in argparse, in fit's typed config and in code."""

from __future__ import annotations

import argparse
import math

import pytest
from jsonargparse import ArgumentParser

from pm_lightning.core import validate as v


@pytest.mark.parametrize(
    "rule, good, bad",
    [
        (v.POSITIVE_INT, ["1", 7, 2.0], ["0", "-3", "2.5", "x", True, 2.5]),
        (v.POSITIVE, ["1e-4", 3], ["0", "-1", "nan", "inf", "-inf"]),
        (v.SEED, ["0", str(2**32 - 1)], ["-1", str(2**32), str(2**70)]),
        (v.SIDE, ["16", "192", "1056"], ["0", "-64", "100", "8208"]),
        (v.STEP_LIMIT, ["-1", "1", "500"], ["0", "-5"]),
        (v.FRACTION, ["0", "0.3", "1"], ["1.5", "-0.1", "nan"]),
    ],
)
def test_each_rule_takes_its_range_and_says_it(rule, good, bad):
    for value in good:
        number = rule.parse(value)
        assert isinstance(number, rule.kind) and rule.ok(number) and math.isfinite(number)
    for value in bad:
        with pytest.raises(ValueError, match=f"must be {rule.describe()}, got"):
            rule.parse(value)
        with pytest.raises(argparse.ArgumentTypeError):
            rule(value)


def test_the_words_name_the_range():
    assert v.POSITIVE_INT.describe() == "an integer >= 1"
    assert v.STEP_LIMIT.describe() == "-1 or an integer >= 1"
    assert v.SIDE.describe() == "a multiple of 16 from 16 to 8192"
    assert v.Rule(float, 0, 60, lo_open=True).describe() == "a finite number > 0 and <= 60"
    with pytest.raises(ValueError, match="^model.init_args.adapter.rank must be an integer >= 1, got 0$"):
        v.POSITIVE_INT.check(0, "model.init_args.adapter.rank")


def test_a_parser_refuses_in_one_line_with_exit_code_2(capsys):
    p = v.Parser(prog="prog")
    p.add_argument("--steps", type=v.SAMPLER_STEPS)
    with pytest.raises(SystemExit) as err:
        p.parse_args(["--steps", "0"])
    line = capsys.readouterr().err
    assert err.value.code == 2 and line.count("\n") == 1
    assert line.startswith("prog: error: argument --steps: must be an integer from 1 to 1000, got '0'")


def test_config_types_give_plain_numbers_and_refuse_at_parse_time():
    class Data:
        def __init__(self, batch_size: v.PositiveInt = 8, seed: v.Seed = 0):
            pass

    p = ArgumentParser(exit_on_error=False)
    p.add_class_arguments(Data, "data")
    cfg = p.parse_args(["--data.batch_size", "4"])
    assert type(cfg.data.batch_size) is int and cfg.data.batch_size == 4  # checkpoints stay plain data
    with pytest.raises(Exception, match="must be an integer >= 1, got '0'"):
        p.parse_args(["--data.batch_size", "0"])
    with pytest.raises(Exception, match="must be an integer from 0 to 4294967295"):
        p.parse_args(["--data.seed", str(2**70)])


def test_path_types(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    assert v.existing_file(str(tmp_path / "f.txt")) == tmp_path / "f.txt"
    for call, arg, words in [
        (v.existing_file, tmp_path / "nope", "no such file"),
        (v.existing_file, tmp_path, "is a folder"),
        (v.existing_dir, tmp_path / "f.txt", "is a file"),
        (v.output_dir, tmp_path / "f.txt", "is an existing file"),
        (v.output_file, tmp_path, "is a folder"),
        (v.output_file, tmp_path / "f.txt" / "x.json", "a parent of it is a file"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            call(str(arg))


def test_every_adaptive_field_and_export_format_has_its_light_twin():
    """The light tables the parsers use (no torch at parse time) name exactly the library's fields and formats."""
    from dataclasses import fields

    from pm_lightning.export import FORMATS
    from pm_lightning.inference.adaptive_rule import AdaptiveConfig
    from pm_lightning.inference.adaptive_settings import FIELD_RULES
    from pm_lightning.models import lora_files

    assert set(FIELD_RULES) == {f.name for f in fields(AdaptiveConfig)}
    assert all(FIELD_RULES[f.name].ok(f.default) for f in fields(AdaptiveConfig))  # the defaults are in range
    assert FORMATS == lora_files.FORMATS
