"""The range of each adaptive-steps setting, one table for AdaptiveConfig (inference/adaptive_rule.py) and its flags
and settings files (inference/adaptive_settings.py); no torch here, so the command-line parsers stay light."""

from __future__ import annotations

import math

from pm_lightning.core import validate as v

# The range of each AdaptiveConfig field: AdaptiveConfig checks its values with it, adaptive_settings makes one flag
# of each (tests/test_adaptive.py checks every field has one). Rules between fields (del_ceiling < add_floor, min_frames <= max_frames) are AdaptiveConfig's own.
FIELD_RULES = {
    "w_glob": v.NON_NEGATIVE,
    "w_loc": v.NON_NEGATIVE,
    "w_sem": v.NON_NEGATIVE,
    "k1": v.NON_NEGATIVE,
    "k2": v.NON_NEGATIVE,
    "add_floor": v.NON_NEGATIVE,
    "del_ceiling": v.Rule(float, 0, extra=(math.inf,)),  # inf: no guard (adaptive_rule.PAPER_RULE)
    "two_frame_ratio": v.Rule(float, 1),
    "min_frames": v.Rule(int, 2, 1000),
    "max_frames": v.Rule(int, 2, 1000),
    "max_rounds": v.Rule(int, 0, 100),
}
