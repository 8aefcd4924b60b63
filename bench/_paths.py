"""The repository root of the bench scripts (`REPO`), put first on sys.path so that `pm_lightning` and `tests`
import from this checkout. Each script runs with bench/ on sys.path and imports this first."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
