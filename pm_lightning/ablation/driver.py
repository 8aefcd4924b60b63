"""One ablation from plan to report: the output folder (the plan saved with it, a changed plan refused), the jobs,
the collection, the local report and the W&B summary run; and the evaluation job a worker process runs."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from pm_lightning.ablation.jobs import build_jobs, eval_dir, job_command, stage1_dir, stage2_dir
from pm_lightning.ablation.plan import Plan, parse_plan, select
from pm_lightning.ablation.report import write_report
from pm_lightning.ablation.results import collect
from pm_lightning.ablation.row_eval import evaluate_pair
from pm_lightning.ablation.row_params import row_parameters
from pm_lightning.ablation.runner import Outcome, PlanChanged, Runner
from pm_lightning.ablation.train_corpus import ensure_train_corpus
from pm_lightning.ablation.wandb_runs import log_eval_run, log_summary_run
from pm_lightning.core.atomic import atomic_path
from pm_lightning.core.run_layout import RunDir

PLAN_FILE = "plan.json"


def plan_record(plan: Plan, data: dict) -> dict:
    """What OUT/plan.json holds: the plan file's content and the selection, enough to rebuild the plan."""
    return {"source": plan.source, "data": data, "quick": plan.quick, "rows": plan.selected, "seeds": plan.seeds,
            "resolved": plan.to_json()}  # fmt: skip


def plan_from_record(record: dict) -> Plan:
    plan = parse_plan(record["data"], record["source"], record["quick"])
    return select(plan, record["rows"], record["seeds"])


def differences(old: Plan, new: Plan) -> list[str]:
    """Settings that change results already in the folder (evaluation, parameter scale, shared rows)."""
    diffs = [k for k in ("eval", "params", "stage1", "stage2") if asdict(getattr(old, k)) != asdict(getattr(new, k))]
    diffs += ["train_corpus"] if old.train_corpus != new.train_corpus else []
    diffs += [f"rows.{r}" for r in old.rows if r in new.rows and _results_of(old.rows[r]) != _results_of(new.rows[r])]
    return diffs


def _results_of(row) -> dict:
    """What of a row decides its results: all but `followup` (whether a plain run selects it)."""
    return {k: v for k, v in asdict(row).items() if k != "followup"}


def prepare(plan: Plan, data: dict, out: Path, start_over: bool = False) -> Path | None:
    """Create OUT (or move an earlier one aside with `start_over`); refuse a folder made by another plan; save the
    plan. Returns where an earlier folder was moved, if it was."""
    out, moved = Path(out), None
    if start_over and out.exists():
        moved = out.with_name(f"{out.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(out), str(moved))
    path = out / PLAN_FILE
    if path.is_file():
        old = plan_from_record(json.loads(path.read_text()))
        diffs = differences(old, plan)
        if diffs:
            raise PlanChanged(
                f"{out} holds an ablation of another plan (changed: {', '.join(diffs)}): use another --out, or "
                "--start-over to move it aside"
            )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(plan_record(plan, data), indent=1) + "\n")
    return moved


def run_ablation(plan: Plan, out: Path, parallel: int, threads: int, command: str, print_fn=print,
                 run_fn=None, summary_run: bool = True, launcher=None) -> tuple[Outcome, dict]:  # fmt: skip
    """Run (or resume) every job through `launcher` (default: local processes), then collect, report and log the
    summary; returns the outcome and the paths."""
    out = Path(out)
    runner = Runner(out, parallel, threads, print_fn, launcher)
    ensure_train_corpus(plan, out, print_fn)
    jobs = build_jobs(plan, out)
    commands = {j.id: job_command(plan, out, j) + runner.launcher.extra_args(j) for j in jobs}
    outcome = runner.run(jobs, commands, run_fn)
    params = {row: row_parameters(plan, row) for row in plan.active_rows}
    results = collect(plan, out, jobs, params)
    md, js, charts, pictures = write_report(plan, out, results, command)
    paths = {"results_md": md, "results_json": js, "charts": charts, "pictures": pictures}
    if summary_run:
        paths["wandb_summary"] = log_summary_run(plan, out, results, charts, pictures)
    return outcome, paths


def run_eval_job(out: Path, job_id: str) -> int:
    """The worker side of an evaluation job (`python -m pm_lightning.ablate --run-job eval/ROW/seed-S --out OUT`)."""

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(out)
    plan = plan_from_record(json.loads((out / PLAN_FILE).read_text()))
    job = next((j for j in build_jobs(plan, out) if j.id == job_id), None)
    if job is None or job.kind != "eval":
        raise SystemExit(f"error: {job_id!r} is no evaluation job of the plan in {out / PLAN_FILE}")
    record = evaluate_pair(plan, out, job.row, job.seed)
    configs, s1 = {}, plan.stage1_row(job.row)  # the resolved configs of the trainings it evaluates
    if s1 is not None:
        configs["stage1"] = _yaml(RunDir(stage1_dir(out, s1, job.seed)).config)
    if plan.rows[job.row].stage2:
        configs["stage2"] = _yaml(RunDir(stage2_dir(out, s1, job.seed)).config)
    where = log_eval_run(plan, out, eval_dir(out, job.row, job.seed), job.row, job.seed, record, configs)
    print(f"{job_id}: {len(record['samples'])} samples scored in {record['eval_s']:.0f} s; W&B run {where}")
    return 0


def _yaml(path: Path) -> dict | None:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def copy_to_docs(out: Path, docs: Path) -> Path:
    """docs/RESULTS.md (links pointing at docs/ablation/), its figures in docs/ablation/{charts,pictures}/ and the
    results.json it was rendered from in docs/ablation/results.json."""
    out, docs = Path(out), Path(docs)
    for sub in ("charts", "pictures"):
        target = docs / "ablation" / sub
        shutil.rmtree(target, ignore_errors=True)
        if (out / sub).is_dir():
            shutil.copytree(out / sub, target)
    (docs / "ablation").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "results.json", docs / "ablation" / "results.json")
    (docs / "RESULTS.md").write_text(docs_links((out / "RESULTS.md").read_text()))
    return docs / "RESULTS.md"


def docs_links(report: str) -> str:
    """A run's RESULTS.md as docs/RESULTS.md: its links to charts/ and pictures/ point into docs/ablation/."""
    return report.replace("](charts/", "](ablation/charts/").replace("](pictures/", "](ablation/pictures/")
