"""bench/gpu_inference.py scaled down on CPU: the same loop, the caches, the table (the GPU run is `make bench-gpu`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import load_bench

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_inference.py"


@pytest.mark.slow
def test_scaled_down_run_measures_every_cache(capsys):
    module = load_bench(BENCH.name)
    rows = module.main(["--device", "cpu", "--repeats", "1", "--no-compile"])
    assert [r["cache"] for r in rows][0] == "none" and len(rows) == 4
    assert rows[0]["rel_l2"] == 0 and all(r["seconds"] > 0 for r in rows)
    assert any(r["rel_l2"] > 0 for r in rows[1:])  # at least one cache changed the computation
    assert "| no | none |" in capsys.readouterr().out
