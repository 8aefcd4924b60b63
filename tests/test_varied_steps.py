"""Processes of varying length behind the synthetic grids (`generate_sequence(..., varied=True)`): MakeAnything §3.5's
processes of varying length shown as 9 or 4 frames, so that some grids are naturally jumpy (more steps than frames)
and some redundant (fewer), with the change per step within a stated spread; the default corpus unchanged."""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import tarfile

import pytest

from pm_lightning import shards, synth
from pm_lightning.ablation.driver import differences
from pm_lightning.ablation.plan import PlanError, parse_plan
from pm_lightning.data.synthetic_canvas import Canvas
from pm_lightning.data.synthetic_corpus import (
    SPECS,
    generate_sequence,
    process_spread,
    sequence_seed,
    write_corpus,
)
from pm_lightning.data.synthetic_process import covered_steps, frame_indices, partition, render_process
from pm_lightning.data.synthetic_varied import ATOMS, STEP_RANGES
from pm_lightning.eval.adaptive_truth import Case, step_oracle_terms
from tests.ablation_fakes import PLAN, plan_data

SEEDS = range(30)
SPREAD_TARGET = 3.0  # every step within this factor of its sequence's median step (docs/DATA.md)


def varied(domain: str, seed: int, size: int = 32):
    return generate_sequence(domain, seed, size, varied=True)


def process_of(domain: str, seed: int, size: int = 32):
    return render_process(SPECS[domain].background, ATOMS[domain], STEP_RANGES[domain], seed, size)


# ---------------------------------------------------------------- the default corpus


DEFAULT_HASH = "131e2a4e04ff5ae9c59a5bc455aa573b7a19541b60a383d576d7075c9f5e915a"
"""sha256 of the default mode's captions, steps, changes and frame bytes for seeds 0, 1, 7 of every domain at 32 px,
computed with the code of main at e42d845 (before the varied mode existed)."""


def test_the_default_corpus_is_unchanged():
    h = hashlib.sha256()
    for d in SPECS:
        for seed in (0, 1, 7):
            s = generate_sequence(d, seed, 32)
            assert s.process_steps is None
            h.update(json.dumps([d, s.caption, s.steps, s.changes]).encode())
            for f in s.frames:
                h.update(f.tobytes())
    assert h.hexdigest() == DEFAULT_HASH


def test_the_default_mode_is_the_fixed_length_renderer():
    """Independent path: the domain's renderer called on a fresh canvas, one frame per step."""
    for d, spec in SPECS.items():
        seq = generate_sequence(d, 5, 32, varied=False)
        c = Canvas(32)
        spec.background(c)
        caption = spec.render(random.Random(5), c)
        assert (seq.caption, seq.steps, seq.changes) == (caption, c.steps, c.changes)
        assert [f.tobytes() for f in seq.frames] == [f.tobytes() for f in c.frames]
        assert seq.steps_between(0, len(seq.frames) - 1) == len(seq.frames) - 1


# ---------------------------------------------------------------- varied mode


def test_every_domain_has_atoms_and_a_range_around_its_frame_count():
    assert set(ATOMS) == set(STEP_RANGES) == set(SPECS)
    for d, (lo, hi) in STEP_RANGES.items():
        assert lo < SPECS[d].frames < hi
        for seed in SEEDS:
            assert len(ATOMS[d](random.Random(seed))[1]) >= hi, (d, seed)  # enough atoms for the longest process


def test_varied_is_deterministic_and_the_same_process_at_every_size():
    for d in SPECS:
        a, b, big = varied(d, 3), varied(d, 3), varied(d, 3, size=64)
        assert [f.tobytes() for f in a.frames] == [f.tobytes() for f in b.frames]
        assert (a.caption, a.steps, a.changes, a.process_steps) == (b.caption, b.steps, b.changes, b.process_steps)
        assert (a.steps, a.changes, a.process_steps) == (big.steps, big.changes, big.process_steps)
        assert len(a.frames) == SPECS[d].frames and a.frames[0].size == (32, 32)


def test_step_counts_span_fewer_and_more_steps_than_frames():
    for d, spec in SPECS.items():
        counts = [sum(varied(d, seed).process_steps) for seed in SEEDS]
        lo, hi = STEP_RANGES[d]
        assert all(lo <= s <= hi for s in counts), (d, counts)
        assert min(counts) < spec.frames < max(counts), (d, counts)
        assert max(counts) - min(counts) >= spec.frames, (d, counts)


def test_frames_are_evenly_spaced_states_first_and_last_included():
    assert frame_indices(18, 9) == [0, 2, 4, 6, 9, 11, 13, 15, 17]
    assert frame_indices(5, 9) == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert frame_indices(4, 4) == [0, 1, 2, 3]
    assert covered_steps([0, 1, 1, 2]) == [1, 1, 0, 1]
    for steps in range(2, 19):
        for frames in (4, 9):
            idx = frame_indices(steps, frames)
            assert idx[0] == 0 and idx[-1] == steps - 1 and idx == sorted(idx)
            assert sum(covered_steps(idx)) == steps


def test_repeated_states_are_exact_repeats_and_counts_sum_to_s():
    """The first frame is the first state (covers 1 step); frame j covers the steps after frame j-1's state up to its
    own, 0 for a repeat; they sum to S. Repeats are byte-identical frames with the same text and no change."""
    seen = {"repeat": 0, "jump": 0}
    for d in SPECS:
        for seed in SEEDS[:10]:
            seq, proc = varied(d, seed), process_of(d, seed)
            s = len(proc.states)
            assert seq.process_steps[0] == 1 and sum(seq.process_steps) == s
            assert seq.frames[-1].tobytes() == proc.states[-1].tobytes() and seq.steps[-1] == proc.steps[-1]
            for j in range(1, len(seq.frames)):
                same = seq.frames[j].tobytes() == seq.frames[j - 1].tobytes()
                assert same == (seq.process_steps[j] == 0), (d, seed, j)
                if same:
                    assert seq.steps[j] == seq.steps[j - 1] and seq.changes[j] == 0
                seen["repeat"] += same
                seen["jump"] += seq.process_steps[j] >= 2
    assert seen["repeat"] > 20 and seen["jump"] > 20


def test_changes_are_the_covered_steps_elements():
    for d in SPECS:
        for seed in SEEDS[:5]:
            seq, proc = varied(d, seed), process_of(d, seed)
            assert sum(seq.changes) == sum(proc.changes)
            k = 0
            for j, n in enumerate(seq.process_steps):
                assert seq.changes[j] == sum(proc.changes[k : k + n])
                k += n
            last = len(seq.frames) - 1
            assert seq.change_between(0, last) == sum(proc.changes[1:])
            assert seq.steps_between(0, last) == len(proc.states) - 1


def test_the_change_per_step_is_within_the_stated_spread():
    """Fraction of pixels changed by each process step at 64 px: within a factor 3 of its sequence's median."""
    for d in SPECS:
        for seed in range(20):
            spread = process_spread(d, sequence_seed(0, d, seed))
            med = statistics.median(spread)
            assert min(spread) > 0 and max(max(spread) / med, med / min(spread)) <= SPREAD_TARGET, (d, seed, spread)


def test_partition_balances_and_covers_every_atom():
    cuts = partition([1, 1, 1, 1, 4, 1, 1], 3)
    assert cuts == [0, 4, 5, 7]
    assert partition([1.0] * 5, 5) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        partition([1.0] * 3, 4)


def test_the_step_oracle_counts_process_steps():
    """A repeated state is 0 steps from its neighbour, a jumpy transition 2 or more: the true process steps, not 1."""
    seqs = [next(s for s in map(lambda k: varied("lego", k), SEEDS) if want in s.process_steps) for want in (0, 2)]
    cases = [Case("untouched", k, list(range(len(s.frames)))) for k, s in enumerate(seqs)]
    for seq, terms in zip(seqs, step_oracle_terms(seqs, cases)):
        assert terms["glob"].tolist() == [float(n) for n in seq.process_steps[1:]]


# ---------------------------------------------------------------- plumbing


def test_the_plan_key_round_trips_and_participates_in_the_comparison():
    data = plan_data()
    plan = parse_plan(data, str(PLAN))
    assert plan.train_corpus.varied_steps is True  # the tiny plan's corpus
    data["train_corpus"]["varied_steps"] = False
    fixed = parse_plan(data, str(PLAN))
    assert fixed.train_corpus.varied_steps is False and differences(plan, fixed) == ["train_corpus"]
    assert json.loads(json.dumps(plan.to_json()))["train_corpus"]["varied_steps"] is True
    data["train_corpus"]["varied_steps"] = "yes"
    with pytest.raises(PlanError, match="train_corpus.varied_steps must be true or false"):
        parse_plan(data, str(PLAN))


def test_a_varied_corpus_is_written_and_sharded(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "shards"
    synth.main(["--out", str(raw), "--sizes", "lego=2", "cake=1", "--size", "32", "--varied-steps", "--no-progress"])
    write_corpus(tmp_path / "plain", {"lego": 1}, size=32, progress=False)
    assert set(json.loads((tmp_path / "plain/lego/seq-000000/meta.json").read_text())) == {"caption", "steps"}
    meta = json.loads((raw / "lego/seq-000001/meta.json").read_text())
    seq = generate_sequence("lego", sequence_seed(0, "lego", 1), 32, varied=True)
    assert meta == {"caption": seq.caption, "steps": seq.steps, "process_steps": seq.process_steps,
                    "changes": seq.changes}  # fmt: skip
    assert len(list((raw / "cake/seq-000000").glob("*.png"))) == 4
    assert shards.main(["--src", str(raw), "--out", str(out), "--size", "32", "--workers", "1", "--no-progress"]) == 0
    names = [m.name for p in sorted(out.glob("*.tar")) for m in tarfile.open(p).getmembers()]
    assert sum(n.endswith(".json") for n in names) == 3
