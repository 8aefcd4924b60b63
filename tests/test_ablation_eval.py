"""The ablation's evaluation pieces: the prompts and their true frames, LoRA files per domain, table metrics, a
row's parameter count."""

from __future__ import annotations

import pytest

from pm_lightning.ablation.jobs import build_jobs, fit_command
from pm_lightning.ablation.plan import PlanError, load_plan, parse_plan
from tests.ablation_fakes import (
    PLAN,
    plan_data,
    three_seed_plan,
    write_fake_results,
)


def test_prompts_are_never_trained_corpus_sequences_with_their_true_frames(tmp_path):
    from pm_lightning.ablation.prompts import plan_prompts, sampler_seed, write_truth
    from pm_lightning.data.synthetic_corpus import DOMAINS

    spec = load_plan(PLAN, quick=True).eval
    prompts = plan_prompts(spec, tmp_path)
    assert [p.domain for p in prompts] == list(DOMAINS)  # one per domain, held-out ones included
    assert plan_prompts(spec, tmp_path)[3].caption == prompts[3].caption  # deterministic
    write_truth(spec, prompts)
    for p in prompts:
        assert len(p.steps) == p.frames == DOMAINS[p.domain] == len(list(p.truth.glob("*.png")))
    assert len({sampler_seed(s, i) for s in range(3) for i in range(len(prompts))}) == 3 * len(prompts)


def test_table_metrics_average_training_and_held_out_domains_apart():
    from pm_lightning.ablation.row_eval import table_metrics
    from pm_lightning.eval.sample_table import edits

    results = {"domains": {"lego": {"align": 80.0, "gt_similarity": 0.5}, "cake": {"align": 60.0, "gt_similarity": None},
                           "origami": {"align": 30.0, "gt_similarity": 0.2}}}  # fmt: skip
    m = table_metrics(results, ["origami", "mosaic"])
    assert m["align"] == 70.0 and m["unseen_align"] == 30.0 and m["align/cake"] == 60.0
    assert m["gt_sim"] == 0.5 and "gt_sim/cake" not in m and m["unseen_gt_sim"] == 0.2
    report = {"rounds": [{"decisions": [{"action": "insert", "n": 2, "applied": True},
                                        {"action": "delete", "applied": True}, {"action": "delete", "applied": False}]},
                         {"decisions": [{"action": "insert", "n": 1, "applied": True}]}]}  # fmt: skip
    assert edits(report) == (3, 1) and edits(None) == (0, 0)


def test_a_row_can_change_its_training_and_its_parameter_count_follows(tmp_path):
    from pm_lightning.ablation.row_params import row_parameters

    data = plan_data()
    data["rows"]["rank2"] = {"label": "masked + align, rank 2", "overlay": "experiments/ablations/masked_align.yaml",
                             "args": {"model.init_args.adapter.rank": 2, "model.init_args.alignment.lambda0": 1.0}}  # fmt: skip
    plan = parse_plan(data, str(PLAN))
    job = next(j for j in build_jobs(plan, tmp_path) if j.id == "stage1/rank2/seed-0")
    cmd = fit_command(plan, job)
    assert cmd[cmd.index("--model.init_args.adapter.rank") + 1] == "2"
    assert cmd[cmd.index("--model.init_args.alignment.lambda0") + 1] == "1.0"
    small, big = row_parameters(plan, "rank2"), row_parameters(plan, "masked_align")
    assert small["params_tiny"] < big["params_tiny"] and small["params_flux"] == big["params_flux"]  # rank 3 -> 2
    data["rows"]["base"]["args"] = {"trainer.max_steps": 5}
    with pytest.raises(PlanError, match="rows.base.args: only a row with an overlay trains"):
        parse_plan(data, str(PLAN))


def test_the_report_renders_the_coherence_proxy_column(tmp_path):
    """Coh proxy (Mono px x Even px, the stand-in for Table 3's GPT-4o Coh) is a column of the plan's tables: its
    per-seed values become "mean ± sd" cells in Table 3 and its held-out mean in the unseen-domains table; without a
    judge the judge's Coh column stays out."""
    import json

    from pm_lightning.ablation.report import write_report
    from pm_lightning.ablation.results import collect

    plan = three_seed_plan()
    jobs = write_fake_results(plan, tmp_path)
    coh = {"base": 0.2, "lora": 0.3, "masked_align": 0.4, "full": 0.5}
    for job in jobs:
        if job.kind == "eval":
            path = job.out / "metrics.json"
            record = json.loads(path.read_text())
            record["metrics"].update(coh_proxy=coh[job.row] + 0.01 * job.seed, unseen_coh_proxy=coh[job.row] / 2)
            path.write_text(json.dumps(record))
    md, _, charts, _ = write_report(plan, tmp_path, collect(plan, tmp_path, jobs, {}), "cmd")
    text = md.read_text()
    table3 = text.split("## ProcessMaker Table 3 (training domains)", 1)[1].split("\n## ", 1)[0]
    head = next(line for line in table3.splitlines() if line.startswith("| row |"))
    cells = [c.strip() for c in head.strip("|").split("|")]
    assert "Coh proxy" in cells and "Coh (judge)" not in cells
    full = next(line for line in table3.splitlines() if line.startswith("| Full (+ adaptive steps) |"))
    assert [c.strip() for c in full.strip("|").split("|")][cells.index("Coh proxy")] == "0.510 ± 0.010"
    unseen = text.split("## Unseen domains", 1)[1].split("\n## ", 1)[0]
    assert "Coh proxy (held out)" in unseen and "| 0.150 |" in unseen.replace(" ± 0.000", "")
    assert "coh_proxy" in charts
