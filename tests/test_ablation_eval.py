"""The ablation's evaluation pieces: the prompts and their true frames, LoRA files per domain, table metrics, a
row's parameter count."""

from __future__ import annotations

import pytest

from pm_lightning.ablation.jobs import build_jobs, fit_command
from pm_lightning.ablation.plan import PlanError, load_plan, parse_plan
from tests.ablation_fakes import (
    PLAN,
    plan_data,
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
    from pm_lightning.ablation.row_eval import edits, table_metrics

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
    data["rows"]["rank8"] = {"label": "masked + align, rank 8", "overlay": "experiments/ablations/masked_align.yaml",
                             "args": {"model.init_args.adapter.rank": 8, "model.init_args.alignment.lambda0": 1.0}}  # fmt: skip
    plan = parse_plan(data, str(PLAN))
    job = next(j for j in build_jobs(plan, tmp_path) if j.id == "stage1/rank8/seed-0")
    cmd = fit_command(plan, job)
    assert cmd[cmd.index("--model.init_args.adapter.rank") + 1] == "8"
    assert cmd[cmd.index("--model.init_args.alignment.lambda0") + 1] == "1.0"
    small, big = row_parameters(plan, "rank8"), row_parameters(plan, "masked_align")
    assert small["params_tiny"] < big["params_tiny"] and small["params_flux"] == big["params_flux"]  # rank 16 -> 8
    data["rows"]["base"]["args"] = {"trainer.max_steps": 5}
    with pytest.raises(PlanError, match="rows.base.args: only a row with an overlay trains"):
        parse_plan(data, str(PLAN))
