"""Run an ablation side by side: `python -m pm_lightning.ablate [--plan FILE] [--quick] [--rows ...] [--seeds ...] [--jobs N]`.

    python -m pm_lightning.ablate                                   # make ablation: the tiny plan, 3 seeds
    python -m pm_lightning.ablate --quick --out runs/ablation-quick # a few steps per row, 1 seed, the same files
    python -m pm_lightning.ablate --rows lora asymmetric --seeds 0 1 --jobs 2
    python -m pm_lightning.ablate --plan experiments/ablations/plans/fabric_toys.yaml   # FLUX.1-dev, each row a fit
    python -m pm_lightning.ablate --plan ...fabric_toys.yaml --launcher slurm --partition P   # each job via submitit

Every training row is a `python -m pm_lightning.fit --config <stage configs> --config <row overlay>` run, every
evaluation the project's own generate / adaptive / evaluate code; all of it is resumable (rerun the same command).
Writes OUT/RESULTS.md, OUT/results.json, OUT/charts/, OUT/pictures/, and W&B runs grouped by the ablation name
(offline without credentials: `wandb sync` them). The plan format and the outputs: docs/ABLATIONS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import yaml

from pm_lightning.core import validate as v
from pm_lightning.core.run_layout import WANDB

DEFAULT_PLAN = "experiments/ablations/plans/tiny.yaml"
CLUSTER_FLAGS = [("--partition", str, "SLURM partition"), ("--account", str, "SLURM account"),
                 ("--nodes", v.WORKERS, "nodes per training"), ("--gpus-per-node", v.WORKERS, "GPUs per node of a "
                 "training"), ("--time", v.WORKERS, "minutes per training")]  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = v.Parser(prog="python -m pm_lightning.ablate", description=__doc__.split("\n")[0])
    p.add_argument("--plan", type=v.existing_file, default=None, help=f"ablation plan (YAML; default {DEFAULT_PLAN})")
    p.add_argument(
        "--out", type=v.output_dir, default=None, help="output folder (default runs/ablation/<name>[-quick])"
    )
    p.add_argument("--quick", action="store_true", help="the plan's quick section: a few steps per row, one seed")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help="only these rows (their trainings come along); `all`: the follow-up rows too (default: every row "
        "but the plan's follow-ups)",
    )
    p.add_argument("--seeds", nargs="+", type=v.SEED, default=None, help="only these seeds")
    p.add_argument("--jobs", type=v.WORKERS, default=None, help="processes at once (default: the plan's)")
    p.add_argument("--threads", type=v.WORKERS, default=None, help="torch threads per process (default cores / jobs)")
    p.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local: processes here (default); slurm: each job submitted through submitit with the plan's "
                   "`cluster` resources; submitit-local: the same through submitit's local executor")  # fmt: skip
    for flag, kind, what in CLUSTER_FLAGS:
        p.add_argument(flag, type=kind, default=None, help=f"--launcher slurm: {what} (default: the plan's cluster)")
    p.add_argument("--start-over", action="store_true", help="move an earlier OUT aside (OUT.prev-<time>) first")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    p.add_argument("--write-docs", action="store_true", help="copy RESULTS.md, figures, results.json to docs/")
    p.add_argument("--run-job", default=None, help=argparse.SUPPRESS)  # the worker of one evaluation job
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # after parsing: the plan's metric columns import torch, the driver the inference stack: 16.8 s (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.ablation import driver
    from pm_lightning.ablation.jobs import build_jobs
    from pm_lightning.ablation.plan import PlanError, load_plan, select
    from pm_lightning.ablation.runner import PlanChanged
    from pm_lightning.ablation.slurm import SlurmLauncher, describe, job_listing, with_overrides
    from pm_lightning.core.paths import project_path

    if args.run_job:
        return driver.run_eval_job(args.out, args.run_job)
    try:
        path = Path(args.plan) if args.plan else project_path(DEFAULT_PLAN)
        plan = select(load_plan(path, args.quick), args.rows, args.seeds)
        out = (args.out or project_path(f"runs/ablation/{plan.name}{'-quick' if args.quick else ''}")).resolve()
        cluster = args.launcher != "local"
        overrides = [getattr(args, flag[2:].replace("-", "_")) for flag, *_ in CLUSTER_FLAGS]
        plan.cluster = with_overrides(plan.cluster, *overrides) if cluster else plan.cluster
        parallel = args.jobs or (len(build_jobs(plan, out)) if cluster else plan.jobs)  # on a cluster: all queued
        threads = args.threads or max(1, (os.cpu_count() or 1) // parallel)
        if args.dry_run:
            print(job_listing(plan, out, cluster))
            return 0
        moved = driver.prepare(plan, yaml.safe_load(path.read_text()), out, args.start_over)
    except (PlanError, PlanChanged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if moved:
        print(f"the earlier {out} was moved to {moved}")
    launcher = SlurmLauncher(out, plan, plan.cluster, args.launcher) if cluster else None
    if not cluster and parallel * threads > (os.cpu_count() or 1):
        print(f"note: {parallel} process(es) x {threads} thread(s) > {os.cpu_count()} cores: they will slow each other")
    how = f"up to {parallel} {args.launcher} job(s) at once ({describe(plan.cluster)})" if cluster else (
        f"{parallel} process(es) x {threads} thread(s)")  # fmt: skip
    print(f"ablation {plan.name}: rows {plan.active_rows}, seeds {plan.seeds}, {how}; output {out}")
    command = shlex.join(["python", "-m", "pm_lightning.ablate", *(sys.argv[1:] if argv is None else argv)])
    try:
        outcome, paths = driver.run_ablation(plan, out, parallel, threads, command, launcher=launcher)
    except PlanChanged as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {paths['results_md']}, {paths['results_json']}, {out / 'charts'}/, {out / 'pictures'}/")
    if "wandb_summary" in paths:
        print(f"W&B summary run: {paths['wandb_summary']} (offline runs: wandb sync {out}/**/{WANDB}/offline-run-*)")
    if args.write_docs:
        driver.copy_to_docs(out, project_path("docs"))
    if not outcome.ok:
        print(f"error: {len(outcome.failed)} job(s) failed ({', '.join(outcome.failed.values())}); "
              f"{len(outcome.blocked)} not run; rerun the same command to resume", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
