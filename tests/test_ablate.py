"""The ablation plan (rows, quick, selection, follow-ups, errors), its jobs and their fit commands. The harness's
runner: test_ablation_runner.py; statistics, report, W&B: test_ablation_stats.py, test_ablation_report.py; the
evaluation pieces: test_ablation_eval.py; the real run: test_ablate_quick.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pm_lightning.ablation.jobs import build_jobs, fit_command, resume_flags, stage1_dir, stage2_dir
from pm_lightning.ablation.plan import PlanError, load_plan, parse_plan, select
from tests.ablation_fakes import (
    PLAN,
    plan_data,
)
from tests.conftest import REPO

# ---------------------------------------------------------------- the plan


def test_the_tiny_plan_has_every_row_of_the_issue():
    plan = load_plan(PLAN)
    issue = {
        "base",
        "lora",
        "asymmetric",
        "masked",
        "masked_align",
        "full",
        "full_no_glob",
        "full_no_loc",
        "full_no_sem",
    }
    follow_up = set(plan.rows) - issue
    assert issue <= set(plan.rows) and all(plan.rows[r].args for r in follow_up)  # extra rows are variants by args
    assert len(plan.seeds) >= 3
    assert plan.rows["full"].from_row == "masked_align" and plan.rows["full_no_sem"].adaptive == "without Delta_sem"
    assert {r.overlay for r in plan.rows.values() if r.overlay} == {
        f"experiments/ablations/{n}.yaml" for n in ("lora", "asymmetric", "masked", "masked_align")
    }


def test_quick_merges_the_quick_section():
    full, quick = load_plan(PLAN), load_plan(PLAN, quick=True)
    assert quick.quick and quick.seeds == [0] and quick.stage1.args["trainer.max_steps"] < 10
    assert quick.stage1.args["trainer.enable_progress_bar"] is False  # the rest of stage1.args is kept
    assert quick.rows.keys() == full.rows.keys()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(seedz=[0]), "unknown key plan.seedz"),
        (lambda d: d["rows"]["lora"].update(overlayy="x.yaml"), "unknown key rows.lora.overlayy"),
        (lambda d: d["eval"].update(clip_model="x"), "unknown key eval.clip_model"),
        (lambda d: d["eval"]["corpus"].update(per_domian=2), "unknown key eval.corpus.per_domian"),
        (lambda d: d["rows"]["lora"].update(overlay="experiments/ablations/nope.yaml"), "nope.yaml not found"),
        (lambda d: d["rows"]["full"].update({"from": "base"}), "rows.full.from: 'base' is no row with an overlay"),
        (lambda d: d["rows"]["full"].update(adaptive="without Delta_x"), "rows.full.adaptive"),
        (lambda d: d["contrasts"][0].update(a="maskd"), "unknown row 'maskd'"),
        (lambda d: d["contrasts"][0].update(metric="alignn"), "metric 'alignn'"),
        (lambda d: d["contrasts"][0].update(family=""), "family must be a name"),
        (lambda d: d["tables"][0]["columns"].append("foo"), "unknown rows or columns ['foo']"),
        (lambda d: d.update(seeds=[0, 0]), "seeds must be a list of distinct integers"),
    ],
)
def test_plan_errors_name_the_file_and_the_key(edit, message):
    data = plan_data()
    edit(data)
    with pytest.raises(PlanError, match="plans/tiny.yaml") as err:
        parse_plan(data, str(PLAN))
    assert message in str(err.value)


def test_quick_without_a_quick_section_and_unknown_rows_are_errors():
    data = plan_data()
    del data["quick"]
    with pytest.raises(PlanError, match="--quick needs a `quick:` section"):
        parse_plan(data, "p.yaml", quick=True)
    with pytest.raises(PlanError, match=r"--rows: unknown \['ful'\]"):
        select(load_plan(PLAN), ["ful"])


def test_selecting_rows_keeps_the_trainings_they_reuse():
    plan = select(load_plan(PLAN), ["full", "lora"], [1])
    ids = [j.id for j in build_jobs(plan, Path("/o"))]
    assert ids == [
        "stage1/masked_align/seed-1",
        "stage2/masked_align/seed-1",
        "stage1/lora/seed-1",
        "eval/lora/seed-1",
        "eval/full/seed-1",
    ]  # fmt: skip  (stage 1 -> stage 2 first: the longest chain)
    assert [c.name for c in plan.contrasts] == []  # no contrast has both of its rows
    assert all(set(t.rows) <= {"full", "lora"} for t in plan.tables)


def test_follow_up_rows_run_only_when_named_or_with_all():
    plan = load_plan(PLAN)
    followups = [n for n, r in plan.rows.items() if r.followup]
    assert followups and "masked_align_r16" in followups and "masked_align" not in followups
    default = select(load_plan(PLAN))
    assert not set(default.active_rows) & set(followups) and "full" in default.active_rows
    assert all(not {c.a, c.b} & set(followups) for c in default.contrasts)
    assert {c.name for c in default.contrasts} == {
        c.name for c in plan.contrasts if not {c.a, c.b} & set(followups)
    }  # every contrast of the default rows is kept
    assert select(load_plan(PLAN), ["all"]).active_rows == list(plan.rows)
    named = select(load_plan(PLAN), ["masked_align", "masked_align_r16"])
    assert named.active_rows == ["masked_align", "masked_align_r16"]
    assert [c.name for c in named.contrasts] == ["follow-up: rank 3 vs 16 (Align held out)"]


# ---------------------------------------------------------------- jobs and commands


def test_each_training_is_a_fit_with_the_stage_configs_and_the_row_overlay(tmp_path):
    plan = load_plan(PLAN)
    jobs = {j.id: j for j in build_jobs(plan, tmp_path)}
    assert len([j for j in jobs.values() if j.kind == "eval"]) == len(plan.rows) * len(plan.seeds)
    trained = len([r for r in plan.rows.values() if r.overlay]) + 1  # every stage-1 row + stage 2
    assert len([j for j in jobs.values() if j.kind != "eval"]) == trained * len(plan.seeds)
    cmd = fit_command(plan, jobs["stage1/asymmetric/seed-2"])
    assert cmd[1:3] == ["-m", "pm_lightning.fit"]
    configs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--config"]
    assert configs == [str(REPO / "experiments/tiny.yaml"), str(REPO / "experiments/ablations/asymmetric.yaml")]
    flag = {a: cmd[i + 1] for i, a in enumerate(cmd) if a.startswith("--") and i + 1 < len(cmd)}
    assert flag["--seed_everything"] == "2" and flag["--experiment"] == "tiny-ablation"
    assert flag["--trainer.default_root_dir"] == str(stage1_dir(tmp_path, "asymmetric", 2))
    assert flag["--trainer.max_steps"] == str(plan.stage1.args["trainer.max_steps"])
    assert flag["--trainer.logger.init_args.job_type"] == "train-stage1"
    assert "row:asymmetric" in json.loads(flag["--trainer.logger.init_args.tags"])
    s2 = jobs["stage2/masked_align/seed-0"]
    cmd2 = fit_command(plan, s2)
    unseen = stage1_dir(tmp_path, "masked_align", 0) / "lora" / "final" / "unseen.safetensors"
    assert cmd2[cmd2.index("--model.init_args.stage1") + 1] == str(unseen)
    assert s2.out == stage2_dir(tmp_path, "masked_align", 0) and s2.deps == ["stage1/masked_align/seed-0"]
    assert set(s2.rows) == {"full", "full_no_glob", "full_no_loc", "full_no_sem"}
    assert jobs["eval/full/seed-0"].deps == ["stage1/masked_align/seed-0", "stage2/masked_align/seed-0"]
    assert jobs["eval/base/seed-0"].deps == []


def test_an_interrupted_training_resumes_from_last_or_starts_over(tmp_path):
    assert resume_flags(tmp_path) == []
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch=0-step=100.ckpt").write_bytes(b"x")
    assert resume_flags(tmp_path) == ["--start_over", "true"]
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resume_flags(tmp_path) == ["--ckpt_path", "last"]


def test_the_flux_dev_plan_drives_fits_with_the_real_configs():
    plan = load_plan(REPO / "experiments" / "ablations" / "plans" / "fabric_toys.yaml")
    assert plan.eval.base == "flux-dev" and plan.eval.corpus is None and len(plan.eval.prompts) >= 4
    jobs = {j.id: j for j in build_jobs(plan, Path("/o"))}
    cmd = fit_command(plan, jobs["stage1/masked/seed-1"])
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--config"] == [
        str(REPO / "experiments/fabric_toys.yaml"),
        str(REPO / "experiments/ablations/masked.yaml"),
    ]
    s2 = fit_command(plan, jobs["stage2/masked_align/seed-0"])
    assert s2[s2.index("--model.init_args.stage1") + 1].endswith(
        "masked_align/seed-0/lora/final/fabric_toys.safetensors"
    )
    assert load_plan(REPO / "experiments" / "ablations" / "plans" / "fabric_toys.yaml", quick=True).seeds == [0]
