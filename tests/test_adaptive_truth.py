"""Ground truth for the adaptive steps: the generator's change counts, the damaged cases and their scoring,
the calibration and where it is stored."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

import pytest
import torch

from pm_lightning.data.synthetic_corpus import DOMAINS, generate_sequence
from pm_lightning.eval.adaptive_docs import DOC, guard_tables, replace_marked, write_docs
from pm_lightning.eval.adaptive_truth import (
    CONDITIONS,
    calibrate_row,
    calibration_grid,
    case_terms,
    k1_grid,
    make_cases,
    max_z,
    oracle_terms,
    outcomes,
    step_oracle_terms,
)
from pm_lightning.eval.change_truth import correlations, pair_table
from pm_lightning.inference.adaptive_rule import PAPER_RULE, AdaptiveConfig, decide, thresholds
from pm_lightning.inference.adaptive_settings import config_from_args, read_settings
from tests.test_adaptive import needs_tiny_eval


def test_every_step_records_what_it_drew():
    for domain in DOMAINS:
        seq = generate_sequence(domain, 5, size=32)
        assert len(seq.changes) == len(seq.frames) and all(c >= 1 for c in seq.changes), domain
        n = len(seq.frames)
        assert seq.change_between(0, n - 1) == sum(seq.changes[1:])
        assert seq.change_between(0, 2) == seq.change_between(0, 1) + seq.change_between(1, 2)
    lego = generate_sequence("lego", 5, size=32)
    assert lego.changes[1:] == [3] * 8  # each brick: two studs and the body
    with pytest.raises(ValueError, match="need 0 <= i < j"):
        lego.change_between(3, 3)


class PixelScorer:
    """A stand-in scorer whose features are the frames' pixels: image distance grows with what was drawn."""

    def image_features(self, images):
        x = torch.stack(
            [torch.tensor(list(im.convert("L").resize((16, 16)).getdata()), dtype=torch.float32) for im in images]
        )
        x = x / 255.0
        v = torch.nn.functional.normalize(torch.cat([x, torch.ones(len(images), 1)], 1), dim=-1)  # (n, 257)
        patches = x.view(len(images), 16, 16)[:, None].unfold(2, 4, 4).unfold(3, 4, 4).reshape(len(images), 16, 16)
        return v, torch.nn.functional.normalize(patches + 1e-3, dim=-1)  # (n, 16 patches, 16)

    def text_features(self, texts):
        g = torch.Generator().manual_seed(0)
        base = torch.randn(len(texts), 8, generator=g)
        return torch.nn.functional.normalize(base, dim=-1)


def test_cases_have_the_right_answers():
    seqs = [generate_sequence(d, 1, size=32) for d in ("lego", "cake")]
    cases = make_cases(seqs, 8)
    assert {c.condition for c in cases} == set(CONDITIONS)
    for c in cases:
        n = len(seqs[c.seq].frames)
        if c.condition == "one_removed":
            (k,) = set(range(n)) - set(c.order)
            assert c.pairs == (k - 1,) and 1 <= k <= n - 2  # interior frame; the pair that lost it
        if c.condition == "two_removed":
            k1, k2 = sorted(set(range(n)) - set(c.order))
            assert n == 9 and k2 - k1 >= 3 and c.pairs == (k1 - 1, k2 - 2)
        if c.condition == "duplicated":
            k = next(i for i in c.order if i >= n) - n
            assert c.order[c.copies[1]] == n + k and c.order[c.copies[0]] == k


def test_outcomes_score_decisions_against_the_answers():
    seqs = [generate_sequence(d, s, size=32) for d in ("lego", "sketch") for s in range(3)]
    cases = make_cases(seqs, 12)
    terms = case_terms(PixelScorer(), seqs, cases)
    never = AdaptiveConfig(add_floor=10.0, del_ceiling=0.0, k1=5, k2=5)  # no edit can pass
    r = outcomes(terms, cases, never, texts=False)
    assert r["untouched_edited"] == 0 and r["removal_found"] == 0 and r["duplicate_deleted"] == 0
    cfg, rates = calibrate_row(terms, cases, "without Delta_sem")
    assert rates["untouched_edited"] <= 0.1
    assert rates["duplicate_deleted"] >= 0.4 and rates["removal_found"] >= 0.4  # 16x16 gray pixels still see some
    assert cfg.del_ceiling < cfg.add_floor


def test_the_oracle_delta_is_the_true_change_and_copies_are_zero():
    seqs = [generate_sequence(d, s, size=32) for d in ("lego", "painting") for s in range(2)]
    cases = make_cases(seqs, 6)
    for c, t in zip(cases, oracle_terms(seqs, cases)):
        seq = seqs[c.seq]
        assert (
            torch.equal(t["glob"], t["loc"]) and torch.equal(t["glob"], t["sem"]) and len(t["glob"]) == len(c.order) - 1
        )
        if c.condition == "one_removed":
            k = c.pairs[0]
            assert t["glob"][k] == seq.changes[k + 1] + seq.changes[k + 2]  # the pair that lost frame k + 1
        if c.condition == "duplicated":
            assert t["glob"][c.copies[0]] == 0
        if c.condition == "untouched":
            assert t["glob"].tolist() == [float(x) for x in seq.changes[1:]]
    never = AdaptiveConfig(add_floor=1e9, del_ceiling=0.0)
    assert outcomes(oracle_terms(seqs, cases), cases, never, True)["removal_found"] == 0


def test_pixel_distance_ranks_the_ground_truth_change():
    seqs = [generate_sequence("lego", s, size=32) for s in range(3)]
    c = correlations(pair_table(PixelScorer(), seqs))
    assert c["glob"]["per_sequence"] > 0.7  # more bricks between two frames: farther apart
    assert set(c) == {"loc", "glob", "sem", "delta"}


def test_calibration_belongs_to_its_encoders(tmp_path):
    record = {
        "encoders": {"clip": "tiny", "dino": "tiny"},
        "config": {"k1": 0.5, "k2": 1.0, "add_floor": 0.3, "del_ceiling": 0.01},
    }
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(record))
    assert read_settings(path, "tiny", "tiny")["add_floor"] == 0.3
    with pytest.raises(ValueError, match="calibrated for clip='tiny'"):
        read_settings(path, "ViT-B-32/openai", "facebook/dinov2-base")
    args = argparse.Namespace(clip="tiny", dino="tiny", adaptive_config=str(path), k1=0.9)
    cfg = config_from_args(args)
    assert (cfg.add_floor, cfg.k1) == (0.3, 0.9)  # the file, then the explicit flag


def test_other_encoders_without_calibration_are_warned_about(caplog):
    args = argparse.Namespace(clip="ViT-B-32/openai", dino="facebook/dinov2-base", adaptive_config=None)
    config_from_args(args)
    assert "no calibration for clip=ViT-B-32/openai" in caplog.text


def test_outcomes_score_what_adapt_sequence_does_in_its_first_round():
    """The benchmark's scoring (decide on the case's Deltas) is the first round of the real path."""
    from pm_lightning.data.near_duplicates import near_duplicate
    from pm_lightning.inference.adaptive import adapt_sequence

    seqs = [generate_sequence(d, s, size=32) for d in ("lego", "cake") for s in range(2)]
    cases = make_cases(seqs, 6)
    scorer = PixelScorer()
    terms = case_terms(scorer, seqs, cases)
    cfg, _ = calibrate_row(terms, cases, "without Delta_sem")
    cfg = replace(cfg, max_rounds=1)
    for t, c in zip(terms, cases):
        seq = seqs[c.seq]
        n = len(seq.frames)
        frames = [seq.frames[k] if k < n else near_duplicate(seq.frames[k - n]) for k in c.order]
        res = adapt_sequence(frames, scorer, lambda a, b, k: [a] * k, cfg=cfg)
        got = [(d["action"], d["pair"]) for d in res.report["rounds"][0]["decisions"] if d["applied"]]
        one = outcomes([t], [c], cfg, texts=False)
        if c.condition == "untouched":
            assert bool(got) == bool(one["untouched_edited"])
        elif c.condition == "one_removed":
            assert (("insert", c.pairs[0]) in got) == bool(one["removal_found"])


@needs_tiny_eval
def test_guard_sweep_command_prints_and_writes_the_guards_it_chose(tmp_path, capsys):
    """`calibrate_adaptive --guard-sweep` as docs/ADAPTIVE.md runs it, on 1 sequence per domain (about 3 s)."""
    from pm_lightning import calibrate_adaptive

    out = tmp_path / "sweep.json"
    calibrate_adaptive.main(["--guard-sweep", "--per-domain", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result) == {"text", "no_text"}
    for r in result.values():
        assert r["sequences"] == len(DOMAINS)
        assert f"chosen: add_floor {r['add_floor']:.2f}, del_ceiling {r['del_ceiling']:.3f}" in printed
        chosen = r["add_sweep"][str(r["add_floor"])]
        assert chosen["false_insert"] <= 0.1 or r["add_floor"] == 0.6  # the loosest guard within max_false
        assert r["del_sweep"][str(r["del_ceiling"])]["false_delete"] <= 0.1


def _step_cases():
    """Sequences of 9-frame (lego, sketch) and 4-frame (cake, origami) domains and their damaged cases."""
    seqs = [generate_sequence(d, s, size=32) for d in ("lego", "cake", "sketch", "origami") for s in range(2)]
    return seqs, make_cases(seqs, 24)


def test_step_oracle_with_the_paper_rule_finds_every_removal_and_edits_no_true_sequence():
    """Delta = the number of process steps between frames (1 per true pair, 2 where a frame is missing, 0 for a
    copy), scored with the paper's rule as published (k1 0.8, k2 1.0, no guards): every removal found, every repeat
    deleted, no untouched sequence edited, no other edit. Red when PAPER_RULE.k1 was set to 1.0 (the 4-frame
    removals, z = 1 exactly, became unreachable: removal_found 0.5) and when the oracle returned element counts."""
    seqs, cases = _step_cases()
    terms = step_oracle_terms(seqs, cases)
    for c, t in zip(cases, terms):
        steps = t["glob"].tolist()
        assert torch.equal(t["glob"], t["loc"]) and torch.equal(t["glob"], t["sem"])
        if c.condition == "untouched":
            assert steps == [1.0] * (len(c.order) - 1)
        if c.condition in ("one_removed", "two_removed"):
            assert [i for i, x in enumerate(steps) if x == 2] == list(c.pairs) and set(steps) == {1.0, 2.0}
        if c.condition == "duplicated":
            assert steps[c.copies[0]] == 0 and steps.count(0) == 1
    assert {len(seqs[c.seq].frames) for c in cases if c.condition == "one_removed"} == {4, 9}
    r = outcomes(terms, cases, PAPER_RULE, True)
    assert r["untouched_edited"] == 0 and r["damaged_other_edits"] == 0
    assert r["removal_found"] == 1 and r["two_removed_found"] == 1 and r["duplicate_deleted"] == 1


def test_no_guard_values_are_neutral():
    """add_floor 0 and del_ceiling inf leave the relative thresholds as they are (Deltas >= 0), and AdaptiveConfig
    takes them; a ceiling at or above a set floor stays an error."""
    g = torch.Generator().manual_seed(3)
    for n in (2, 3, 8):
        delta = torch.rand(n, generator=g)
        thr = thresholds(delta, PAPER_RULE)
        assert (thr.add, thr.delete) == (thr.tau_add, thr.tau_del)
    assert (PAPER_RULE.k1, PAPER_RULE.k2, PAPER_RULE.add_floor, PAPER_RULE.del_ceiling) == (0.8, 1.0, 0.0, math.inf)
    with pytest.raises(ValueError, match="below add_floor"):
        AdaptiveConfig(add_floor=0.1, del_ceiling=0.2)
    with pytest.raises(ValueError, match="add_floor must be a finite number"):
        AdaptiveConfig(add_floor=math.inf)


def test_the_largest_z_score_of_n_deltas_is_sqrt_n_minus_1():
    """Samuelson's inequality, as `max_z` states it: no z-score of n values exceeds sqrt(n - 1), one spike over
    equal values reaches it, so the rule inserts there only when k1 < sqrt(n - 1) (at equality float rounding decides); `k1_grid` keeps only such k1
    for the shortest one-removed case. Red when max_z returned sqrt(n) (the spike then missed at k1 just below)."""
    g = torch.Generator().manual_seed(0)
    for n in range(2, 12):
        assert max_z(n) == pytest.approx(math.sqrt(n - 1))
        x = torch.rand(200, n, generator=g) ** 3
        z = (x - x.mean(1, keepdim=True)) / x.std(1, unbiased=False, keepdim=True)
        assert float(z.max()) <= max_z(n) + 1e-5
        spike = torch.tensor([1.0] * (n - 1) + [2.0])
        zs = (spike - spike.mean()) / spike.std(unbiased=False)
        assert float(zs.max()) == pytest.approx(max_z(n), rel=1e-5)
        for k1, inserts in ((max_z(n) - 1e-3, True), (max_z(n) + 1e-6, False)):  # at equality rounding decides
            cfg = replace(PAPER_RULE, k1=k1)
            got = [d.pair for d in decide(spike, thresholds(spike, cfg), cfg) if d.action == "insert"]
            assert got == ([n - 1] if inserts else []), (n, k1)
    _, cases = _step_cases()  # 4-frame sequences: a removal leaves 2 Deltas, bound 1
    assert k1_grid(cases) and max(k1_grid(cases)) < 1 and 0.8 in k1_grid(cases)
    nine = [c for c in cases if len(c.order) >= 8]
    assert max(k1_grid(nine)) > 1 and all(k < max_z(7) for k in k1_grid(nine))  # 9 frames - 1: 7 Deltas


def test_the_calibration_grid_contains_the_paper_rule_and_chooses_it_when_nothing_does_better():
    """The grid holds "no guard" (add_floor 0, del_ceiling inf) and the paper's rule as a whole; on the step
    oracle, where it is perfect, the calibration returns it. Red when `calibration_grid` left out the paper's rule
    (the staged search then chose k1 0)."""
    seqs, cases = _step_cases()
    terms = step_oracle_terms(seqs, cases)
    grid = calibration_grid(terms, cases)
    assert (0.8, 0.0) in grid["insert"] and (1.0, math.inf) in grid["delete"] and PAPER_RULE in grid["rules"]
    assert all(k1 < 1 for k1, _ in grid["insert"])
    cfg, rates = calibrate_row(terms, cases)
    assert (cfg.k1, cfg.k2, cfg.add_floor, cfg.del_ceiling) == (0.8, 1.0, 0.0, math.inf)
    assert rates["removal_found"] == 1 and rates["untouched_edited"] == 0


def _sweep_result():
    """A `sweep_guards`-shaped result (as JSON gives it back: string keys), two modes."""
    floors = [round(0.02 * k, 2) for k in range(31)]
    ceilings = [round(0.005 * k, 3) for k in range(31)]
    mode = {
        "pair_quantiles": {c: {q: 0.1 * i + 0.01 * j for j, q in enumerate(("p05", "p25", "p50", "p75", "p95"))}
                           for i, c in enumerate(("duplicate", "normal", "skip1", "skip2"))},  # fmt: skip
        "add_floor": 0.42, "del_ceiling": 0.025, "two_frame_ratio": 1.0, "two_frame_ratio_balanced_error": 0.34,
        "add_sweep": {str(f): {"false_insert": 1 - f, "gap1": f / 2, "gap2": f / 3} for f in floors},
        "del_sweep": {str(c): {"false_delete": c, "dup": 2 * c} for c in ceilings},
        "sequences": 180,
    }  # fmt: skip
    return json.loads(json.dumps({"no_text": mode, "text": mode}))


def test_regenerating_the_tables_is_idempotent(tmp_path):
    """docs/ADAPTIVE.md carries every block the command writes, once; writing the same tables twice leaves the
    second write byte-identical and the prose outside the markers untouched. Red when `replace_marked` kept the old
    block's first line (the second write grew the document)."""
    blocks = {"ground-truth": "| row |\n|---|\n| full |", **guard_tables(_sweep_result())}
    assert "| **0.42** | **0.580** |" in blocks["guard-add"] and "| **0.025** |" in blocks["guard-del"]
    doc = tmp_path / "ADAPTIVE.md"
    doc.write_text(DOC.read_text())
    write_docs(blocks, doc)
    once = doc.read_text()
    write_docs(blocks, doc)
    assert doc.read_text() == once
    outside = [p.split("<!-- adaptive:end -->")[-1] for p in once.split("<!-- adaptive:begin ")]
    assert outside == [p.split("<!-- adaptive:end -->")[-1] for p in DOC.read_text().split("<!-- adaptive:begin ")]
    for name, body in blocks.items():
        assert f"<!-- adaptive:begin {name} -->\n{body}\n<!-- adaptive:end -->" in once
    with pytest.raises(ValueError, match="adaptive:begin nowhere"):
        replace_marked(once, "nowhere", "x")
