"""docs/ARCHITECTURE.md names every module of the package (and the how-tos it promises are there)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

DOC = (REPO / "docs" / "ARCHITECTURE.md").read_text()
MODULES = sorted(p for p in (REPO / "pm_lightning").rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO / "pm_lightning")))
def test_every_module_is_named_in_the_architecture_page(path):
    """File names are unique in the package (tests/test_layout.py), so the name alone places the module."""
    assert re.search(rf"(?<![\w/]){re.escape(path.name)}\b", DOC), f"{path.relative_to(REPO)} missing from the map"


def test_the_page_shows_how_to_add_each_extension_point():
    for heading in ("**An adapter kind.**", "**A metric.**", "**A sampler cache.**", "**A strategy.**"):
        assert heading in DOC
