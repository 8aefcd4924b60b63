"""The shared writer of docs/BENCHMARKS.md sections: each bench replaces only its own section."""

import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from docs_section import write_section  # noqa: E402


def test_replaces_only_its_own_section_and_appends_new_ones(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## Data\n\nold data\n\n## Model core\n\nmodel figures\n")
    write_section("## Data\n\nnew data\n", doc)
    write_section("## Generation\n\ngen figures\n", doc)
    text = doc.read_text()
    assert "old data" not in text and "new data" in text and "model figures" in text and "intro" in text
    assert text.index("## Data") < text.index("## Model core") < text.index("## Generation")
    write_section("## Model core\n\nnew model\n", doc)
    assert doc.read_text().count("## ") == 3 and "model figures" not in doc.read_text()


def test_rejects_a_section_without_header(tmp_path):
    with pytest.raises(ValueError, match="header"):
        write_section("no header", tmp_path / "B.md")
