"""Each bench script owns one `## <title>` section of docs/BENCHMARKS.md and replaces only that one."""

from __future__ import annotations

from pathlib import Path

from _paths import REPO  # bench/ is on sys.path when run as a script

BENCH_MD = REPO / "docs" / "BENCHMARKS.md"
PREAMBLE = "# Benchmarks\n\nFigures measured by the `bench/` scripts (`make bench`); rerun them to refresh.\n"


def write_section(section: str, path: Path = BENCH_MD) -> None:
    """Replace the section whose `## ` header is `section`'s first line (in place), or append it."""
    header = section.splitlines()[0].strip()
    if not header.startswith("## "):
        raise ValueError(f"a benchmark section starts with its '## ' header, got {header!r}")
    text = path.read_text() if path.exists() else PREAMBLE
    start = text.find(header + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(header))
        text = text[:start] + section.rstrip("\n") + "\n" + ("" if end < 0 else text[end:])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
