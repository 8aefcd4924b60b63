"""What `make mutation` found untested in inference/adaptive.py (docs/TESTING.md, "Mutation testing"): the round
report against the rule's own functions, the decisions' fields, where the final frames came from, the interpolated
text embedding of inserted frames, and the evaluators' text features on the rounds' path.

Each test was seen red by hand with the mutants it names (the mutant's diff from
build/mutation/inference.adaptive/summary.json applied to the module, the test run, the module restored)."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F

from pm_lightning.inference.adaptive import adapt_sequence
from pm_lightning.inference.adaptive_rule import (
    combine,
    effective_weights,
    global_delta,
    local_delta,
    semantic_delta,
    thresholds,
)
from tests.test_adaptive import (  # noqa: F401 - scorer is a fixture
    STUB_CFG,
    AngleScorer,
    midpoint_insert,
    needs_tiny_eval,
    scorer,
    smooth,
    truth,
)


def test_each_round_reports_its_pairs_terms_thresholds_and_frame_counts_as_the_rule_computes_them():
    """Mutants run_round 40 (`[i, i - 1]`), 54 (terms to 7 decimals, Delta to 6), 147 (`round` renamed),
    148 (`frames_before` renamed) and 158 (`thresholds` renamed)."""
    frames = smooth()[:4] + smooth()[5:]  # one missing frame: round 1 inserts, round 2 converges
    res = adapt_sequence(frames, AngleScorer(), midpoint_insert, STUB_CFG)
    r1, r2 = res.report["rounds"]
    assert (r1["round"], r2["round"]) == (1, 2)
    assert (r1["frames_before"], r1["frames_after"], r2["frames_before"], r2["frames_after"]) == (8, 9, 9, 9)
    v, tokens = AngleScorer().image_features(frames)  # (8, 2), (8, 4, 2)
    terms = {"glob": global_delta(v), "loc": local_delta(tokens), "sem": None}  # (7,) each
    delta = combine(terms, effective_weights(STUB_CFG, False))  # (7,)
    assert [p["pair"] for p in r1["pairs"]] == [[i, i + 1] for i in range(7)]
    assert [p["frames"] for p in r1["pairs"]] == [[str(i), str(i + 1)] for i in range(7)]
    for i, p in enumerate(r1["pairs"]):  # the terms at the precision of Delta (6 decimals, docs/ADAPTIVE.md)
        assert (p["glob"], p["loc"], p["sem"]) == (
            round(float(terms["glob"][i]), 6),
            round(float(terms["loc"][i]), 6),
            None,
        )
        assert p["delta"] == round(float(delta[i]), 6)
    bars = {**asdict(thresholds(delta, STUB_CFG)), "add_floor": STUB_CFG.add_floor, "del_ceiling": STUB_CFG.del_ceiling}
    assert r1["thresholds"] == pytest.approx(bars)


def test_an_insertion_reports_n_and_a_deletion_reports_its_frame_not_the_other_field():
    """Mutant run_round 181 (the deletion's `n` kept): each decision carries only its own field."""
    truth_ = smooth()
    dup = adapt_sequence(truth_[:5] + [truth_[4].copy()] + truth_[5:], AngleScorer(), midpoint_insert, STUB_CFG)
    (delete,) = dup.report["rounds"][0]["decisions"]
    assert delete["action"] == "delete" and delete["frame"] in (4, 5) and "n" not in delete
    gap = adapt_sequence(truth_[:4] + truth_[5:], AngleScorer(), midpoint_insert, STUB_CFG)
    (insert,) = gap.report["rounds"][0]["decisions"]
    assert insert["action"] == "insert" and insert["n"] == 1 and "frame" not in insert


def test_a_deletion_the_bounds_refuse_is_reported_and_not_applied():
    """Mutant run_round 67 (`d.applied or d.action == "delete"`: a refused deletion applied all the same)."""
    truth_ = smooth()
    frames = truth_[:5] + [truth_[4].copy()] + truth_[5:]  # 10 frames, a duplicate at pair 4
    res = adapt_sequence(frames, AngleScorer(), midpoint_insert, replace(STUB_CFG, min_frames=10))
    (delete,) = res.report["rounds"][0]["decisions"]
    assert delete["action"] == "delete" and not delete["applied"] and "min_frames" in delete["reason"]
    assert res.images == frames and res.report["stopped"].startswith("converged")


def test_two_frames_are_compared_and_inserted_frames_take_the_input_size():
    """Mutants adapt_sequence 30 (`len(frames) <= 2`: a pair of frames reported as too few to compare), 23 and 59 (the inserted
    frames not resized to the first input frame's size, docs/ADAPTIVE.md "Input")."""
    two = adapt_sequence(smooth(2), AngleScorer(), midpoint_insert, STUB_CFG)
    assert len(two.report["rounds"]) == 1 and len(two.report["rounds"][0]["pairs"]) == 1
    assert two.report["stopped"].startswith("converged")
    none = adapt_sequence(smooth(2), AngleScorer(), midpoint_insert, replace(STUB_CFG, max_rounds=0))
    assert none.report["rounds"] == [] and none.report["stopped"] == "max_rounds reached"  # not "fewer than two"
    big = lambda a, b, n: [im.resize((16, 12)) for im in midpoint_insert(a, b, n)]  # noqa: E731  another size
    res = adapt_sequence(smooth()[:4] + smooth()[5:], AngleScorer(), big, STUB_CFG)
    assert len(res.images) == 9 and {im.size for im in res.images} == {(8, 8)}


def test_final_frames_say_where_each_output_frame_came_from():
    """Mutants adapt_sequence 93 (`final_frames` renamed) and 94 (its `label` renamed)."""
    frames = smooth()[:4] + smooth()[5:]
    res = adapt_sequence(frames, AngleScorer(), midpoint_insert, STUB_CFG)
    final = res.report["final_frames"]
    assert (
        [f["label"] for f in final]
        == [f.label for f in res.frames]
        == ["0", "1", "2", "3", "r1:3-4#1", "4", "5", "6", "7"]
    )
    assert final[0] == {"label": "0", "text": None, "source": "input", "index": 0}
    assert final[4] == {
        "label": "r1:3-4#1", "text": None, "source": "inserted", "round": 1, "between": ["3", "4"], "k": 1, "of": 1
    }  # fmt: skip


def test_the_note_says_why_the_semantic_term_was_dropped():
    """Mutant initial_frames 8 (the no-texts note changed): the note names the cause, not only the effect."""
    frames = smooth(4)
    none = adapt_sequence(frames, AngleScorer(), midpoint_insert, STUB_CFG)
    assert none.report["note"].startswith("no step texts: Delta_sem dropped")
    empty = adapt_sequence(frames, AngleScorer(), midpoint_insert, STUB_CFG, steps=["a", " ", "c", "d"])
    assert empty.report["sem_dropped"] and empty.report["note"].startswith("some step texts are empty: Delta_sem")


def test_inserted_frames_text_embeddings_interpolate_their_neighbours_and_feed_the_next_round():
    """Mutant _between 16 (`t / b.sem`): the k-th of n inserted frames gets normalize((1 - t) u_a + t u_b),
    t = k / (n + 1) (docs/ADAPTIVE.md), and round 2's Delta_sem is computed from it."""
    truth_ = smooth()
    steps = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff", "g" * 7]
    res = adapt_sequence(truth_[:3] + truth_[5:], AngleScorer(), midpoint_insert, STUB_CFG, steps)  # double gap
    assert [f.label for f in res.frames[3:5]] == ["r1:2-3#1", "r1:2-3#2"]
    u = AngleScorer().text_features(steps)  # (7, 2)
    for k, frame in enumerate(res.frames[3:5], start=1):
        t = k / 3
        assert torch.allclose(frame.sem, F.normalize((1 - t) * u[2] + t * u[3], dim=-1), atol=1e-6)
    r2 = res.report["rounds"][1]
    sem = semantic_delta(torch.stack([f.sem for f in res.frames]))  # (8,)
    assert [p["sem"] for p in r2["pairs"]] == [round(float(s), 6) for s in sem]


@needs_tiny_eval
def test_the_evaluators_text_embeddings_give_delta_sem(scorer):  # noqa: F811 - the fixture imported above
    """Mutant EncoderScorer.text_features 2 (`list(None)`; no test gave step texts to the real scorer)."""
    seq = truth("lego", 0)
    frames, steps = seq.frames[:4], ["a green brick", "a red brick on it", "a blue brick on top", "a yellow roof"]
    res = adapt_sequence(frames, scorer, lambda a, b, n: [a] * n, STUB_CFG, steps)
    u = scorer.enc.text_embeddings(steps)  # (4, D)
    assert torch.allclose(scorer.text_features(steps), u)
    expected = [round(float(s), 6) for s in semantic_delta(u)]
    assert [p["sem"] for p in res.report["rounds"][0]["pairs"]] == pytest.approx(expected, abs=2e-6)
