"""The evidence behind an ablation's report (ablation/evidence.py): results.json holds every (row, seed, domain,
metric) value, the plan path, seeds, command, the calibration in use and the masked rows' domain gates, with no
absolute path; RESULTS.md is rendered from results.json alone (written, reloaded, rendered again: identical); the
summaries and contrasts follow from the long-form values; `--write-docs` copies results.json beside the pictures.

Checked red: with `document` keeping the paths as they are (no `portable_tree` / `portable_command`), the round-trip
test fails on the absolute `--out` of the command in RESULTS.md; with a tied gate counted once per name, the gate
test finds 12 gates, not 8; docs/RESULTS.md with its old absolute plan path fails the last test.
"""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch

from tests.ablation_fakes import three_seed_plan, write_fake_results
from tests.conftest import REPO

PLAN_PATH = "experiments/ablations/plans/tiny.yaml"


def masked_checkpoint(path, gates: str = "sigmoid", kind: str = "masked"):
    """A stage-1 checkpoint as the stage modules write it (lora_files' contract): two domains, a gate tensor tied
    between to_q and to_k (one storage, as torch.save keeps it), another on ff, lora_A / lora_B beside them.
    Sigmoid gates of those logits: lego [0.5, ~0 | ~0, ~0], cake [~1, 0.5 | 0.5, 0.5]."""
    tied = torch.tensor([[0.0, -10.0], [10.0, 0.0]])  # (C, g)
    ff = torch.tensor([[-10.0, -10.0], [0.0, 0.0]])
    pre = "backbone.transformer.transformer_blocks.0."
    state = {f"{pre}attn.to_q.lora_gate.default": tied, f"{pre}attn.to_k.lora_gate.default": tied,
             f"{pre}ff.net.0.proj.lora_gate.default": ff, f"{pre}attn.to_q.lora_A.default.weight": torch.ones(4, 8),
             f"{pre}attn.to_q.lora_B.default.weight": torch.zeros(8, 4)}  # fmt: skip
    adapter = {"kind": kind, "rank": 4, "num_domains": 2, "mask_fraction": 0.5, "gates": gates}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": {"adapter": adapter, "domains": ["lego", "cake"]}}, path)
    return path


def fake_ablation(out):
    """The stub run of tests/ablation_fakes plus what a real one leaves for the evidence: stage-1 last checkpoints
    (masked_align masked, lora plain) and the adaptive calibration file, with an absolute encoder path in it."""
    from pm_lightning.ablation.jobs import stage1_dir
    from pm_lightning.ablation.results import collect
    from pm_lightning.core.run_layout import RunDir

    plan = three_seed_plan()
    jobs = write_fake_results(plan, out)
    for seed in plan.seeds:
        masked_checkpoint(RunDir(stage1_dir(out, "masked_align", seed)).last_checkpoint)
        masked_checkpoint(RunDir(stage1_dir(out, "lora", seed)).last_checkpoint, kind="lora")
    calibration = {"cases_per_condition": 4, "split": 2, "encoders": {"clip": str(out / "models" / "clip"),
                   "dino": "tiny"}, "rows": {"full": {"config": {"insert_threshold": 0.25}}}}  # fmt: skip
    (out / "calibration.json").write_text(json.dumps(calibration))
    return plan, collect(plan, out, jobs, {"lora": {"params_tiny": 10, "params_flux": 20}})


def strings(tree):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield k
            yield from strings(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from strings(v)
    elif isinstance(tree, str):
        yield tree


def test_results_json_renders_alone_and_round_trips_without_absolute_paths(tmp_path):
    from pm_lightning.ablation.report import render, write_report

    out = tmp_path / "out"
    plan, results = fake_ablation(out)
    command = f"python -m pm_lightning.ablate --plan {REPO / PLAN_PATH} --out={out} --seeds 0 1 2"
    md, js, _, _ = write_report(plan, out, results, command)
    text, saved = md.read_text(), js.read_text()
    doc = json.loads(saved)
    assert render(doc) == text  # the report is what results.json renders
    again = tmp_path / "again.json"
    again.write_text(json.dumps(doc, indent=1) + "\n")
    assert again.read_text() == saved and render(json.loads(again.read_text())) == text

    for blob in (text, saved):
        assert str(tmp_path) not in blob and str(REPO) not in blob
    assert not [s for s in strings(doc) if os.path.isabs(s)]
    assert not re.search(r"`/[^`]*`|\]\(/", text)  # no absolute path in a code span or a link
    assert doc["plan_path"] == PLAN_PATH and doc["plan"]["source"] == PLAN_PATH
    assert doc["command"] == f"python -m pm_lightning.ablate --plan {PLAN_PATH} --out=out --seeds 0 1 2"
    assert f"Plan: `{PLAN_PATH}`" in text and doc["seeds"] == [0, 1, 2]
    assert doc["calibration"]["encoders"] == {"clip": "clip", "dino": "tiny"}  # outside the repo: the file name
    assert doc["calibration"]["rows"] == {"full": {"config": {"insert_threshold": 0.25}}}
    assert doc["charts"]["align"] == "charts/align.png" and "![Align](charts/align.png)" in text
    assert (
        "## Domain gates of the masked rows" in text
        and "| Full (+ adaptive steps) | masked_align | 1 | 8 (sigmoid) |" in text
    )


def test_every_value_is_in_long_form_and_the_figures_follow_from_it(tmp_path):
    from pm_lightning.ablation.evidence import check, document

    plan, results = fake_ablation(tmp_path)
    doc = json.loads(json.dumps(document(plan, tmp_path, results, "cmd", {}, {})))
    values = doc["values"]
    n = sum(len(s["metrics"]) for r in results["rows"].values() for s in r["seeds"].values())
    assert len(values) == n and n > 0
    assert {"row": "lora", "seed": 1, "domain": "lego", "metric": "align", "value": 53.0} in values  # align/lego
    assert {"row": "lora", "seed": 1, "domain": None, "metric": "align", "value": 52.0} in values
    assert {"row": "full", "seed": 2, "domain": None, "metric": "truth_removal_found", "value": 0.2} in values
    assert check(doc) == []

    # one value changed: the summary of its row and the contrasts that read it no longer follow
    rec = next(v for v in values if (v["row"], v["seed"], v["metric"], v["domain"]) == ("full", 0, "coh_proxy", None))
    rec["value"] += 0.5
    wrong = check(doc)
    assert "rows.full.summary.coh_proxy" in wrong and "contrasts.full vs stage 1 (Coh proxy).mean" in wrong
    assert not any("align" in w for w in wrong)


def test_gate_statistics_of_the_masked_rows_final_adapter(tmp_path):
    from pm_lightning.ablation.evidence import document, gate_stats

    s = gate_stats(masked_checkpoint(tmp_path / "m.ckpt"))
    tiny = 1 / (1 + math.exp(10))  # sigmoid(-10)
    assert s["gates"] == "sigmoid" and s["n"] == 8  # the tied gate once: 2 domains x (2 + 2)
    assert s["near_zero"] == pytest.approx(3 / 8) and s["near_zero_below"] == 0.05
    assert s["min"] == pytest.approx(tiny, rel=1e-4) and s["max"] == pytest.approx(1 - tiny, rel=1e-4)
    assert s["mean"] == pytest.approx((0.5 + 3 * tiny + (1 - tiny) + 1.5) / 8, rel=1e-5)
    assert s["per_domain_mean"] == {"lego": pytest.approx(0.125, abs=1e-4), "cake": pytest.approx(0.625, abs=1e-4)}
    raw = gate_stats(masked_checkpoint(tmp_path / "u.ckpt", gates="unbounded"))  # the parameters are the gates
    assert (raw["min"], raw["max"], raw["near_zero"]) == (-10.0, 10.0, 0.5)  # the four logits 0 are gates 0
    assert gate_stats(masked_checkpoint(tmp_path / "l.ckpt", kind="asymmetric")) is None

    plan, results = fake_ablation(tmp_path / "out")
    gates = document(plan, tmp_path / "out", results, "cmd", {}, {})["gates"]
    assert set(gates) == {"masked_align", "full"}  # full's adapter is masked_align's training; lora is no mask
    assert gates["full"]["training"] == "masked_align" and set(gates["full"]["seeds"]) == {"0", "1", "2"}
    assert gates["full"]["seeds"]["0"]["n"] == 8

    from pm_lightning.ablation.jobs import stage1_dir
    from pm_lightning.core.run_layout import RunDir

    RunDir(stage1_dir(tmp_path / "out", "masked_align", 2)).last_checkpoint.write_bytes(b"not a checkpoint")
    gates = document(plan, tmp_path / "out", results, "cmd", {}, {})["gates"]
    assert gates["full"]["seeds"]["2"] == {"error": "unreadable checkpoint last.ckpt"}  # said, not left out
    assert gates["full"]["seeds"]["1"]["n"] == 8


def test_write_docs_copies_results_json_beside_the_pictures(tmp_path):
    from pm_lightning.ablation.driver import copy_to_docs
    from pm_lightning.ablation.report import render, write_report

    out, docs = tmp_path / "out", tmp_path / "docs"
    plan, results = fake_ablation(out)
    write_report(plan, out, results, "python -m pm_lightning.ablate --write-docs")
    text = copy_to_docs(out, docs).read_text()
    copied = docs / "ablation" / "results.json"
    assert copied.read_text() == (out / "results.json").read_text() and (docs / "ablation" / "pictures").is_dir()
    rendered = render(json.loads(copied.read_text()))
    assert rendered.replace("](charts/", "](ablation/charts/").replace("](pictures/", "](ablation/pictures/") == text


def test_portable_paths():
    from pm_lightning.ablation.evidence import portable, portable_command

    assert portable(REPO / PLAN_PATH) == PLAN_PATH and portable(PLAN_PATH) == PLAN_PATH
    assert portable("/elsewhere/runs/plan.yaml") == "plan.yaml"
    assert portable_command(f"python -m x --plan={REPO / 'a.yaml'} /tmp/o y") == "python -m x --plan=a.yaml o y"


def test_the_committed_results_name_no_absolute_path():
    """docs/RESULTS.md is committed: a path of the machine it ran on means nothing elsewhere."""
    text = (REPO / "docs" / "RESULTS.md").read_text()
    assert not re.search(r"`/[^`]*`|\]\(/", text) and "/work/" not in text


def test_the_committed_report_is_what_its_committed_results_json_renders():
    """docs/RESULTS.md is the render of docs/ablation/results.json alone, with its links pointing into docs/ablation/
    (`--write-docs`, driver.copy_to_docs): a hand edit of a cell, or a results.json of another run, fails here.
    Checked red once by changing one mean in docs/RESULTS.md."""
    from pm_lightning.ablation.driver import docs_links
    from pm_lightning.ablation.report import render

    doc = json.loads((REPO / "docs" / "ablation" / "results.json").read_text())
    assert (REPO / "docs" / "RESULTS.md").read_text() == docs_links(render(doc))
    for picture in re.findall(r"\]\((ablation/[^)]+)\)", (REPO / "docs" / "RESULTS.md").read_text()):
        assert (REPO / "docs" / picture).is_file(), picture
