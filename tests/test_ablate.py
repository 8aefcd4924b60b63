"""The ablation harness's pure parts: statistics, the plan, the jobs and their commands, resume and parallel runs
(stub jobs), the report and the W&B runs read back with wandb's own protobuf. The real run: test_ablate_quick.py."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import pytest
import yaml

from pm_lightning.ablation import stats
from pm_lightning.ablation.jobs import Job, build_jobs, fit_command, resume_flags, stage1_dir, stage2_dir
from pm_lightning.ablation.plan import PlanError, load_plan, parse_plan, select
from pm_lightning.ablation.runner import PlanChanged, Runner, marker_path
from tests.conftest import REPO

PLAN = REPO / "experiments" / "ablations" / "plans" / "tiny.yaml"


def plan_data() -> dict:
    return yaml.safe_load(PLAN.read_text())


# ---------------------------------------------------------------- statistics


def test_mean_and_sample_sd_match_the_standard_library():
    values = [3.0, 4.5, 10.0, -1.25]
    s = stats.summarize([*values, None, float("nan")])
    assert s.n == 4 and s.mean == pytest.approx(statistics.mean(values))
    assert s.sd == pytest.approx(statistics.stdev(values))
    assert stats.summarize([2.0]).sd is None and stats.summarize([]).mean is None


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_the_closed_forms(p):
    assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-6)  # Cauchy
    assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-6)
    assert stats.t_quantile(1 - p, 5) == pytest.approx(-stats.t_quantile(p, 5))


def test_t_quantile_tends_to_the_normal_and_cdf_inverts_it():
    assert stats.t_quantile(0.975, 10_000) == pytest.approx(statistics.NormalDist().inv_cdf(0.975), abs=1e-3)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-5)  # the printed tables
    for df in (1, 3, 30):
        assert stats.t_cdf(stats.t_quantile(0.9, df), df) == pytest.approx(0.9, abs=1e-9)


def test_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 5.0}
    b = {0: 9.0, 1: 10.5, 2: 10.0, 4: 1.0}  # seed 3 / 4 unpaired: left out
    d = stats.paired(a, b)
    diffs = [1.0, 1.5, 1.0]
    half = stats.t_quantile(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
    assert d.n == 3 and d.diffs == diffs and d.mean == pytest.approx(statistics.mean(diffs))
    assert (d.low, d.high) == (pytest.approx(d.mean - half), pytest.approx(d.mean + half))
    assert d.excludes_zero is True
    assert stats.paired({0: 1.0, 1: 2.0}, {0: 2.0, 1: 1.0}).excludes_zero is False  # +-1: straddles 0
    one = stats.paired({0: 1.0}, {0: 0.0})
    assert one.mean == 1.0 and one.low is None and one.excludes_zero is None


def test_a_difference_within_the_seed_spread_is_flagged():
    d = stats.paired({0: 1.0, 1: 3.0, 2: 5.0}, {0: 0.5, 1: 2.5, 2: 4.5})  # +0.5 every seed
    assert stats.beyond_spread(d, stats.summarize([1, 3, 5]), stats.summarize([0.5, 2.5, 4.5])) is False
    assert d.excludes_zero is True  # consistent across seeds, yet smaller than either row's spread
    big = stats.paired({0: 10.0, 1: 10.2}, {0: 1.0, 1: 1.1})
    assert stats.beyond_spread(big, stats.summarize([10, 10.2]), stats.summarize([1, 1.1])) is True
    assert stats.beyond_spread(stats.paired({0: 1.0}, {0: 0.0}), stats.summarize([1]), stats.summarize([0])) is None


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
    assert followups and "masked_align_r4" in followups and "masked_align" not in followups
    default = select(load_plan(PLAN))
    assert not set(default.active_rows) & set(followups) and "full" in default.active_rows
    assert all(not {c.a, c.b} & set(followups) for c in default.contrasts)
    assert {c.name for c in default.contrasts} == {
        c.name for c in plan.contrasts if not {c.a, c.b} & set(followups)
    }  # every contrast of the default rows is kept
    assert select(load_plan(PLAN), ["all"]).active_rows == list(plan.rows)
    named = select(load_plan(PLAN), ["masked_align", "masked_align_r4"])
    assert named.active_rows == ["masked_align", "masked_align_r4"]
    assert [c.name for c in named.contrasts] == ["follow-up: rank 4 vs 16 (Align held out)"]


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


# ---------------------------------------------------------------- the runner (stub jobs)


class StubJobs:
    """Stands in for the processes: records calls, writes what a finished job leaves, fails where told."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, job: Job, command: list[str]) -> tuple[int, float, bool]:
        self.calls.append(job.id)
        if job.id in self.fail:
            return 1, 0.1, False
        if job.kind != "eval":
            (job.out / "lora" / "final").mkdir(parents=True, exist_ok=True)
            (job.out / "lora" / "final" / "unseen.safetensors").write_bytes(b"")
        return 0, 1.5, False


def small_plan():
    return select(load_plan(PLAN), ["base", "lora", "masked_align", "full"], [0, 1])


def commands_for(plan, out):
    from pm_lightning.ablation.jobs import job_command

    jobs = build_jobs(plan, out)
    return jobs, {j.id: job_command(plan, out, j) for j in jobs}


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


# ---------------------------------------------------------------- collecting, the report, W&B (stub metrics)


def fake_metrics(row: str, seed: int) -> dict:
    """Deterministic stand-in scores: masked_align clearly ahead on Align, full vs stage 1 within the seed noise."""
    base = {"base": 40.0, "lora": 50.0, "masked_align": 60.0, "full": 60.0}[row]
    noise = [0.0, 2.0, -2.0][seed]
    m = {"align": base + noise, "align/lego": base + noise + 1, "align/origami": base - 10, "unseen_align": base - 10,
         "even_px": 0.5 + 0.01 * seed + (0.005 if row == "full" else 0.0), "gt_sim": 0.7}  # fmt: skip
    if row == "full":
        m.update(truth_removal_found=0.2, inserted=0.5)
    return m


def write_fake_results(plan, out: Path) -> list[Job]:
    jobs, _ = commands_for(plan, out)
    Runner(out, 1, 1, lambda s: None).run(jobs, commands_for(plan, out)[1], StubJobs())
    for job in jobs:
        if job.kind == "eval":
            job.out.mkdir(parents=True, exist_ok=True)
            samples = job.out / "samples" / "lego-00"
            samples.mkdir(parents=True)
            from PIL import Image

            Image.new("RGB", (192, 192), (40 * job.seed, 100, 150)).save(samples / "grid.png")
            record = {"row": job.row, "seed": job.seed, "metrics": fake_metrics(job.row, job.seed),
                      "samples": [{"sample": str(samples), "domain": "lego", "prompt": "a lego tower", "align": 50.0}]}  # fmt: skip
            (job.out / "metrics.json").write_text(json.dumps(record))
    return jobs


def three_seed_plan():
    return select(load_plan(PLAN), ["base", "lora", "masked_align", "full"], [0, 1, 2])


def test_collect_gives_rows_by_seeds_by_metrics_with_spread_and_contrasts(tmp_path):
    from pm_lightning.ablation.results import collect

    plan = three_seed_plan()
    jobs = write_fake_results(plan, tmp_path)
    results = collect(plan, tmp_path, jobs, {"lora": {"params_tiny": 10, "params_flux": 20}})
    lora = results["rows"]["lora"]
    assert sorted(lora["seeds"]) == [0, 1, 2] and lora["seeds"][1]["metrics"]["align"] == 52.0
    assert lora["seeds"][0]["metrics"]["train_s"] == 1.5  # the stub's wall time of its one training
    assert results["rows"]["full"]["seeds"][0]["metrics"]["train_s"] == 3.0  # stage 1 + stage 2
    assert "train_s" not in results["rows"]["base"]["seeds"][0]["metrics"]  # trains nothing
    assert lora["summary"]["align"] == {"n": 3, "mean": 50.0, "sd": pytest.approx(2.0)}
    by_name = {c["name"]: c for c in results["contrasts"]}
    unseen = by_name["unseen: mask removed vs plain LoRA"]
    assert unseen["mean"] == pytest.approx(10.0) and unseen["beyond_spread"] is True
    assert unseen["verdict"] == "reproduced in direction"
    even = by_name["full vs stage 1 (Even px)"]
    assert even["mean"] == pytest.approx(0.005) and even["excludes_zero"] is True and even["beyond_spread"] is False
    assert results["missing"] == []


def test_the_report_has_the_tables_the_claims_and_the_figures(tmp_path):
    from pm_lightning.ablation.report import write_report
    from pm_lightning.ablation.results import collect

    plan = three_seed_plan()
    jobs = write_fake_results(plan, tmp_path)
    (jobs[-1].out / "metrics.json").unlink()  # one pair not finished
    results = collect(plan, tmp_path, jobs, {})
    md, js, charts, pictures = write_report(plan, tmp_path, results, "python -m pm_lightning.ablate")
    text = md.read_text()
    assert "## ProcessMaker Table 3 (training domains)" in text and "## Unseen domains" in text
    assert "| Plain LoRA, mixed data | 3 | " in text and "50.00 ± 2.00" in text
    assert "Acc (judge)" not in text  # no judge scores: no judge columns
    per_domain = text.split("## Align per domain", 1)[1].split("##", 1)[0]
    assert (
        "| Align lego | Align origami |" in per_domain
        and "| Base model, no LoRA | 3 | 41.00 ± 2.00 | 30.00 ± 0.00 |" in per_domain
    )
    claims = text.split("## Which claims reproduce", 1)[1].split("## Missing", 1)[0]
    reproduced, rest = claims.split(
        "**Same direction as the paper, not resolved (within the seed spread, or the interval holds 0)**"
    )
    assert (
        "- unseen: mask removed vs plain LoRA (" in reproduced
        and "reproduced in direction (Align (held out) +10" in reproduced
    )
    assert "- full vs stage 1 (Even px) (" in rest  # +0.005 on every seed, yet smaller than either row's spread
    assert "- full vs stage 1 (Even px)" not in reproduced
    assert "Not finished (rerun the same command to resume): full/seed-2" in text
    saved = json.loads(js.read_text())
    assert set(saved["rows"]) == {"base", "lora", "masked_align", "full"}
    assert (
        set(saved["rows"]["lora"]["seeds"]) == {"0", "1", "2"}
        and "align" in saved["rows"]["lora"]["seeds"]["0"]["metrics"]
    )
    assert "align" in charts and charts["align"].is_file() and f"]({charts['align'].relative_to(tmp_path)})" in text
    assert set(pictures) == {"base", "lora", "masked_align", "full"}
    from PIL import Image

    with Image.open(pictures["lora"]) as im:
        assert im.width > 160 and im.height > 160


def history_keys(records) -> set[str]:
    return {i.key or "/".join(i.nested_key[:1]) for r in records if r.WhichOneof("record_type") == "history" for i in r.history.item}  # fmt: skip


def offline_run(folder: Path) -> Path:
    (run,) = Path(folder).glob("wandb/offline-run-*")
    return run


def test_wandb_runs_read_back_with_the_group_the_row_and_the_table(tmp_path, monkeypatch):
    import pm_lightning.training.wandb_logger as wl
    from pm_lightning.ablation.report import write_report
    from pm_lightning.ablation.results import collect
    from pm_lightning.ablation.wandb_runs import log_eval_run, log_summary_run
    from tests.helpers import wandb_records

    monkeypatch.setattr(wl, "has_wandb_credentials", lambda: False)
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    plan = three_seed_plan()
    jobs = write_fake_results(plan, tmp_path)
    results = collect(plan, tmp_path, jobs, {})
    _, _, charts, pictures = write_report(plan, tmp_path, results, "cmd")
    record = json.loads((tmp_path / "eval" / "lora" / "seed-1" / "metrics.json").read_text())
    log_eval_run(plan, tmp_path, tmp_path / "eval" / "lora" / "seed-1", "lora", 1, record, {"stage1": {"seed_everything": 1}})  # fmt: skip
    log_summary_run(plan, tmp_path, results, charts, pictures)
    assert offline_run(tmp_path).name.endswith("-summary")
    time.sleep(1.1)  # offline folders are named by the second: the rerun's has another name
    log_summary_run(plan, tmp_path, results, charts, pictures)  # a rerun of the ablation replaces its summary run
    assert len(list(tmp_path.glob("wandb/offline-run-*"))) == 1  # (offline_run below asserts it too)

    evals = wandb_records(offline_run(tmp_path / "eval" / "lora" / "seed-1"))
    (run,) = [r.run for r in evals if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.job_type) == ("tiny-ablation", "lora") and {"row:lora", "seed:1"} <= set(run.tags)
    prefix = (tmp_path / "wandb-id").read_text().strip()
    assert run.run_id == f"{prefix}-eval-lora-s1"  # stable: a rerun of the job replaces it, no duplicate row on W&B
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["row"] == "lora" and config["training"]["stage1"]["seed_everything"] == 1
    summary = {i.key: json.loads(i.value_json) for r in evals if r.WhichOneof("record_type") == "summary" for i in r.summary.update if i.key}  # fmt: skip
    assert summary["align/lego"] == record["metrics"]["align/lego"] and summary["unseen_align"] == 40.0

    folder = offline_run(tmp_path)
    records = wandb_records(folder)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.job_type) == ("tiny-ablation", "summary")
    assert {"ablation", "charts", "bars", "samples"} <= {k.split("/")[0] for k in history_keys(records)}
    (table,) = (folder / "files" / "media" / "table" / "ablation").glob("table_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"][:3] == ["row", "label", "seeds"]
    assert {row[0] for row in data["data"]} == {"base", "lora", "masked_align", "full"}
    align = data["columns"].index("align mean")
    assert {row[0]: row[align] for row in data["data"]}["lora"] == pytest.approx(50.0)
    assert len(list((folder / "files" / "media" / "images").rglob("*.png"))) >= len(charts) + len(pictures)


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


# ---------------------------------------------------------------- evaluation pieces


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


def test_the_lora_file_of_a_domain_falls_back_to_unseen_then_lora(tmp_path):
    from pm_lightning.ablation.row_eval import lora_for

    assert lora_for(None, "lego") is None
    for name in ("lego", "unseen"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    assert lora_for(tmp_path, "lego").name == "lego.safetensors"
    assert lora_for(tmp_path, "origami").name == "unseen.safetensors"
    with pytest.raises(FileNotFoundError, match="no LoRA file for 'x'"):
        lora_for(tmp_path / "empty", "x")


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


def test_write_docs_copies_the_report_with_its_figures(tmp_path):
    from pm_lightning.ablation.driver import copy_to_docs
    from pm_lightning.ablation.report import write_report
    from pm_lightning.ablation.results import collect

    plan, out, docs = three_seed_plan(), tmp_path / "out", tmp_path / "docs"
    jobs = write_fake_results(plan, out)
    write_report(plan, out, collect(plan, out, jobs, {}), "cmd")
    docs.mkdir()
    text = copy_to_docs(out, docs).read_text()
    links = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert links and all(link.startswith("ablation/") and (docs / link).is_file() for link in links)
