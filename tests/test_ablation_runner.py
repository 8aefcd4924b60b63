"""The ablation runner with stub jobs: dependencies, parallel runs, resume, failures, another plan's folder."""

from __future__ import annotations

import json

import pytest

from pm_lightning.ablation.plan import load_plan, parse_plan, select
from pm_lightning.ablation.runner import PlanChanged, Runner, marker_path
from tests.ablation_fakes import (
    PLAN,
    StubJobs,
    commands_for,
    plan_data,
    small_plan,
)


@pytest.mark.parametrize("parallel", [1, 3])
def test_jobs_run_after_what_they_need_and_a_rerun_skips_finished_pairs(tmp_path, parallel):
    plan = small_plan()
    jobs, commands = commands_for(plan, tmp_path)
    stub, lines = StubJobs(), []
    outcome = Runner(tmp_path, parallel, 1, lines.append).run(jobs, commands, stub)
    assert outcome.ok and sorted(outcome.done) == sorted(j.id for j in jobs) and len(stub.calls) == len(jobs)
    for job in jobs:
        assert all(stub.calls.index(d) < stub.calls.index(job.id) for d in job.deps)
        assert json.loads(marker_path(tmp_path, job).read_text())["command"] == commands[job.id]
    assert any("[rows 4/4 | (row, seed) pairs 8/8" in line for line in lines)
    assert any("left]" in line and "~?" not in line for line in lines[-3:])  # the time left, once every kind ran

    again = StubJobs()
    second = Runner(tmp_path, parallel, 1, lines.append).run(jobs, commands, again)
    assert again.calls == [] and sorted(second.skipped) == sorted(j.id for j in jobs)


def test_an_interrupted_ablation_runs_only_what_is_missing(tmp_path):
    plan = small_plan()
    jobs, commands = commands_for(plan, tmp_path)
    Runner(tmp_path, 1, 1, lambda s: None).run(jobs, commands, StubJobs())
    marker_path(tmp_path, next(j for j in jobs if j.id == "eval/full/seed-1")).unlink()  # killed mid-evaluation
    marker_path(tmp_path, next(j for j in jobs if j.id == "stage1/lora/seed-0")).unlink()  # killed mid-training
    stub = StubJobs()
    Runner(tmp_path, 1, 1, lambda s: None).run(jobs, commands, stub)
    assert stub.calls == ["stage1/lora/seed-0", "eval/full/seed-1"]


def test_a_failed_job_blocks_its_dependents_only(tmp_path):
    plan = small_plan()
    jobs, commands = commands_for(plan, tmp_path)
    stub, lines = StubJobs(fail={"stage1/masked_align/seed-1"}), []
    outcome = Runner(tmp_path, 2, 1, lines.append).run(jobs, commands, stub)
    assert list(outcome.failed) == ["stage1/masked_align/seed-1"]
    assert sorted(outcome.blocked) == ["eval/full/seed-1", "eval/masked_align/seed-1", "stage2/masked_align/seed-1"]
    assert "eval/lora/seed-1" in outcome.done and "eval/full/seed-0" in outcome.done
    assert any("FAILED stage1/masked_align/seed-1" in line and ".log" in line for line in lines)


def test_results_of_another_plan_are_refused(tmp_path):
    plan = small_plan()
    jobs, commands = commands_for(plan, tmp_path)
    Runner(tmp_path, 1, 1, lambda s: None).run(jobs, commands, StubJobs())
    steps, plan.stage1.args["trainer.max_steps"] = plan.stage1.args["trainer.max_steps"], 999
    _, changed = commands_for(plan, tmp_path)
    with pytest.raises(
        PlanChanged,
        match=rf"masked_align/seed-0 from another plan:\n  then: .*max_steps {steps} .*\n  now: .*max_steps 999 ",
    ):
        Runner(tmp_path, 1, 1, lambda s: None).run(jobs, changed, StubJobs())


def test_a_subset_of_rows_reuses_the_trainings_of_a_finished_folder(tmp_path):
    """`--rows masked_align` after a full run: its training's W&B tags no longer name `full`, the job is the same."""
    plan = small_plan()
    jobs, commands = commands_for(plan, tmp_path)
    Runner(tmp_path, 1, 1, lambda s: None).run(jobs, commands, StubJobs())
    subset = select(load_plan(PLAN), ["masked_align"], [0, 1])
    sub_jobs, sub_commands = commands_for(subset, tmp_path)
    tags = sub_commands["stage1/masked_align/seed-0"]
    assert "row:full" not in tags[tags.index("--trainer.logger.init_args.tags") + 1]  # the tags did change
    again = StubJobs()
    outcome = Runner(tmp_path, 1, 1, lambda s: None).run(sub_jobs, sub_commands, again)
    assert not again.calls and not outcome.failed  # every job skipped, nothing refused


def test_the_output_folder_keeps_its_plan(tmp_path):
    from pm_lightning.ablation.driver import prepare

    plan = load_plan(PLAN)
    prepare(plan, plan_data(), tmp_path)
    prepare(select(load_plan(PLAN), ["lora"], [0]), plan_data(), tmp_path)  # a subset of the same plan: fine
    data = plan_data()
    data["rows"]["lora"]["followup"] = True  # whether a plain run selects a row changes none of its results
    prepare(parse_plan(data, str(PLAN)), data, tmp_path)
    data = plan_data()
    data["eval"]["corpus"]["per_domain"] = 5
    with pytest.raises(PlanChanged, match="changed: eval"):
        prepare(parse_plan(data, str(PLAN)), data, tmp_path)
    moved = prepare(parse_plan(data, str(PLAN)), data, tmp_path, start_over=True)
    assert moved is not None and (moved / "plan.json").is_file()
