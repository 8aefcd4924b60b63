"""bench/missing_step.py: the scoring of adapt's report against the removed frame, the missing-LoRA exit, a quick run."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from tests.helpers import load_bench

BENCH = REPO / "bench" / "missing_step.py"


@pytest.fixture(scope="module")
def ms():
    return load_bench(BENCH.name, "missing_step_bench")


def report(deltas, decisions):
    pairs = [{"pair": [i, i + 1], "delta": d} for i, d in enumerate(deltas)]
    return {"adaptive": {"rounds": [{"pairs": pairs, "decisions": decisions}]}}


def test_gap_outcome_reads_the_first_round(ms):
    hit = report([0.1, 0.5, 0.2], [{"action": "insert", "pair": 1, "applied": True}])
    assert ms.gap_outcome(hit, 1) == {"inserted_at_gap": True, "gap_is_largest": True, "edits_elsewhere": False}
    elsewhere = report(
        [0.6, 0.5, 0.01],
        [
            {"action": "insert", "pair": 0, "applied": True},
            {"action": "insert", "pair": 1, "applied": False},
            {"action": "delete", "pair": 2, "frame": 3, "applied": True},
        ],
    )
    assert ms.gap_outcome(elsewhere, 1) == {"inserted_at_gap": False, "gap_is_largest": False, "edits_elsewhere": True}


def test_missing_stage2_lora_is_a_clear_exit(ms, tmp_path):
    with pytest.raises(SystemExit, match="make train-stage2"):
        ms.main(["--quick", "--no-doc", "--stage2", str(tmp_path / "none.safetensors")])


def test_quick_run_writes_its_section(ms, tmp_path):
    from pm_lightning.inference.tiny_defaults import default_lora

    if not default_lora("stage2").is_file():
        pytest.skip("no trained tiny stage-2 LoRA under runs/ (`make train-stage2`)")
    doc = tmp_path / "ADAPTIVE.md"
    doc.write_text("# Adaptive\n\n## Other\n\ntext\n")
    result = ms.main(["--quick", "--doc", str(doc)])
    assert len(result["cases"]) == len(ms.QUICK_DOMAINS)
    assert all(set(ms.ROWS) <= set(c) and 1 <= c["removed"] <= 7 for c in result["cases"])
    text = doc.read_text()
    assert text.startswith("# Adaptive\n\n## Other\n\ntext\n") and text.count(ms.SECTION + "\n") == 1
