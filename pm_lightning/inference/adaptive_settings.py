"""Where the adaptive-steps settings of a run come from: the command-line flags, a settings file, and the
calibration stored with the encoder pair (`python -m pm_lightning.calibrate_adaptive`)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pm_lightning.core import validate as v
from pm_lightning.core.paths import tiny_eval_dir
from pm_lightning.inference.adaptive_ranges import FIELD_RULES

if TYPE_CHECKING:
    from pm_lightning.inference.adaptive_rule import AdaptiveConfig

log = logging.getLogger(__name__)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--<field>` flag per AdaptiveConfig field (dashes for underscores), default None = config value."""
    group = parser.add_argument_group("adaptive steps (AdaptiveConfig, docs/ADAPTIVE.md)")
    group.add_argument(
        "--adaptive-config",
        type=v.existing_file,
        default=None,
        help="YAML/JSON file of AdaptiveConfig fields (flags override)",
    )
    for name, rule in FIELD_RULES.items():
        group.add_argument(f"--{name.replace('_', '-')}", type=rule, default=None, help=rule.describe())


def calibration_file(clip: str, dino: str) -> Path | None:
    """Where the calibration of an encoder pair lives: the tiny evaluators' folder for ("tiny", "tiny"); other pairs
    keep theirs where `python -m pm_lightning.calibrate_adaptive --out` wrote it (given with --adaptive-config)."""
    if (clip, dino) == ("tiny", "tiny"):
        return tiny_eval_dir() / "adaptive_calibration.json"
    return None


def read_settings(path: str | Path, clip: str | None, dino: str | None) -> dict:
    """AdaptiveConfig values from a YAML mapping, or from a calibration record (`{"encoders", "config"}`), which
    must belong to the encoders in use: guards calibrated for one encoder pair mean nothing for another."""
    with open(path) as fh:
        values = dict(yaml.safe_load(fh) or {})
    if "encoders" in values and "config" in values:
        enc = values["encoders"]
        if clip is not None and (enc.get("clip"), enc.get("dino")) != (clip, dino):
            raise ValueError(
                f"{path} was calibrated for clip={enc.get('clip')!r}, dino={enc.get('dino')!r}, not clip={clip!r}, "
                f"dino={dino!r}: run python -m pm_lightning.calibrate_adaptive --clip {clip} --dino {dino} --out FILE"
            )
        values = dict(values["config"])
    return {k: FIELD_RULES[k].check(x, f"{path}: {k}") if k in FIELD_RULES else x for k, x in values.items()}


def config_from_args(args: argparse.Namespace) -> AdaptiveConfig:
    """AdaptiveConfig: the encoders' calibration (tiny: data/tiny-eval/adaptive_calibration.json), else
    `--adaptive-config`, then the explicit flags. Other encoders without a calibration keep the dataclass
    defaults with a warning: the guards there were calibrated for the tiny evaluators. ValueError names a bad value
    (its file, or the pair of flags that contradict each other)."""
    # inside: adaptive_rule.py brings torch; the parsers import this module for its flags, before torch loads
    from pm_lightning.inference.adaptive_rule import AdaptiveConfig

    clip, dino = getattr(args, "clip", None), getattr(args, "dino", None)
    values: dict = {}
    own = calibration_file(clip, dino) if clip is not None else None
    if getattr(args, "adaptive_config", None):
        values = read_settings(args.adaptive_config, clip, dino)
    elif own is not None and own.is_file():
        values = read_settings(own, clip, dino)
    elif clip is not None and (clip, dino) != ("tiny", "tiny"):
        log.warning(
            "adaptive steps: no calibration for clip=%s, dino=%s; add_floor / del_ceiling are the tiny evaluators' "
            "values and may not fit: python -m pm_lightning.calibrate_adaptive --clip %s --dino %s --out FILE, "
            "then --adaptive-config FILE",
            clip, dino, clip, dino,
        )  # fmt: skip
    for f in fields(AdaptiveConfig):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return AdaptiveConfig.from_dict(values)
