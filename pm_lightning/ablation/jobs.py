"""The jobs of an ablation: stage-1 and stage-2 trainings (real `python -m pm_lightning.fit` runs) and one
evaluation per (row, seed), with their dependencies and where each writes.

    OUT/train/<row>/seed-<s>/            stage-1 run directory of a row with an overlay
    OUT/train/<row>+stage2/seed-<s>/     stage-2 run directory on that row's domain-free LoRA
    OUT/eval/<row>/seed-<s>/             samples/, metrics.json, wandb/
    OUT/corpus/train/                    the shards of the plan's `train_corpus`, when it has one
    OUT/jobs/<job>.json                  the marker of a finished job (its command and wall time)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pm_lightning.ablation.plan import Plan
from pm_lightning.core.paths import project_path
from pm_lightning.core.run_layout import RunDir


@dataclass
class Job:
    """One unit of work, run as its own process."""

    id: str  # "stage1/masked_align/seed-0", "stage2/masked_align/seed-0", "eval/full/seed-0"
    kind: str  # stage1 | stage2 | eval
    row: str  # the row it trains for (stage 1 / stage 2: the row with the overlay) or evaluates
    seed: int
    out: Path  # its run directory (training) or evaluation folder
    deps: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)  # the rows that use this job's result (W&B tags)

    @property
    def marker_name(self) -> str:
        return self.id.replace("/", "__") + ".json"


def stage1_dir(out: Path, row: str, seed: int) -> Path:
    return Path(out) / "train" / row / f"seed-{seed}"


def stage2_dir(out: Path, row: str, seed: int) -> Path:
    return Path(out) / "train" / f"{row}+stage2" / f"seed-{seed}"


def eval_dir(out: Path, row: str, seed: int) -> Path:
    return Path(out) / "eval" / row / f"seed-{seed}"


def calibration_file(out: Path) -> Path:
    """The adaptive rows' calibration, computed once per output folder (`row_eval.adaptive_configs`)."""
    return Path(out) / "calibration.json"


def train_corpus_dir(out: Path) -> Path:
    """The shards of the plan's `train_corpus`, built once per output folder (`ablation/train_corpus.py`)."""
    return Path(out) / "corpus" / "train"


def fused_stage1(plan: Plan, out: Path, row: str, seed: int) -> Path:
    """The stage-1 file a row's stage 2 trains on and inference fuses (default the domain-free `unseen` one)."""
    return RunDir(stage1_dir(out, row, seed)).lora_final / f"{plan.stage2_fuses}.safetensors"


def build_jobs(plan: Plan, out: Path) -> list[Job]:
    """Every job the plan's active rows x seeds need, trainings before the evaluations that read them."""
    out = Path(out)
    trains: dict[str, Job] = {}
    evals: list[Job] = []
    for seed in plan.seeds:
        for row in plan.active_rows:
            spec, deps = plan.rows[row], []
            s1 = plan.stage1_row(row)
            if s1 is not None:
                job = trains.setdefault(
                    f"stage1/{s1}/seed-{seed}",
                    Job(f"stage1/{s1}/seed-{seed}", "stage1", s1, seed, stage1_dir(out, s1, seed)),
                )
                job.rows.append(row)
                deps.append(job.id)
            if spec.stage2:
                job = trains.setdefault(
                    f"stage2/{s1}/seed-{seed}",
                    Job(f"stage2/{s1}/seed-{seed}", "stage2", s1, seed, stage2_dir(out, s1, seed),
                        deps=[f"stage1/{s1}/seed-{seed}"]),
                )  # fmt: skip
                job.rows.append(row)
                deps.append(job.id)
            evals.append(Job(f"eval/{row}/seed-{seed}", "eval", row, seed, eval_dir(out, row, seed), deps, [row]))
    feeds_stage2 = {d for j in trains.values() if j.kind == "stage2" for d in j.deps}

    def first(job: Job) -> tuple[int, int]:  # the longest chain first: stage 1 that stage 2 waits for, then stage 2
        return job.seed, 0 if job.id in feeds_stage2 else 1 if job.kind == "stage2" else 2

    return [*sorted(trains.values(), key=first), *evals]


def cli_value(value) -> str:
    """A plan `args` value as LightningCLI reads it from the command line (lists / mappings as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def fit_command(plan: Plan, job: Job) -> list[str]:
    """The `python -m pm_lightning.fit` command line of a training job (without resume flags)."""
    stage = plan.stage1 if job.kind == "stage1" else plan.stage2
    cmd = [sys.executable, "-m", "pm_lightning.fit"]
    for cfg in stage.configs:
        cmd += ["--config", str(project_path(cfg))]
    if job.kind == "stage1":
        cmd += ["--config", str(project_path(plan.rows[job.row].overlay))]
    else:
        cmd += ["--model.init_args.stage1", str(fused_stage1(plan, job.out.parents[2], job.row, job.seed))]
    tags = sorted({f"ablation:{plan.name}", f"seed:{job.seed}", f"train:{job.kind}", *(f"row:{r}" for r in job.rows)})
    cmd += [
        "--seed_everything", str(job.seed),
        "--trainer.default_root_dir", str(job.out),
        "--experiment", plan.name,
        "--trainer.logger.init_args.project", plan.project,
        "--trainer.logger.init_args.name", f"{job.row}{'+stage2' if job.kind == 'stage2' else ''}-seed{job.seed}",
        "--trainer.logger.init_args.job_type", f"train-{job.kind}",
        "--trainer.logger.init_args.tags", json.dumps(tags),
    ]  # fmt: skip
    if plan.train_corpus is not None:  # before the plan's args, which may still override them
        cmd += ["--data.train_shards", str(train_corpus_dir(job.out.parents[2]))]
        cmd += ["--data.domains", json.dumps(list(plan.train_corpus.sizes))]
    args = {**stage.args, **(plan.rows[job.row].args if job.kind == "stage1" else {})}
    for key, value in args.items():
        cmd += [f"--{key}", cli_value(value)]
    return cmd


def resume_flags(run_dir: Path) -> list[str]:
    """An interrupted training: resume from its last checkpoint, or start over when it left no `last.ckpt`."""
    run = RunDir(run_dir)
    if run.last_checkpoint.is_file():
        return ["--ckpt_path", "last"]
    if run.checkpoints.is_dir() and any(run.checkpoints.rglob("*.ckpt")):
        return ["--start_over", "true"]
    return []


def eval_command(out: Path, job: Job) -> list[str]:
    """The evaluation job: `python -m pm_lightning.ablate --run-job ID --out OUT` (reads OUT/plan.json)."""
    return [sys.executable, "-m", "pm_lightning.ablate", "--run-job", job.id, "--out", str(out)]


def job_command(plan: Plan, out: Path, job: Job) -> list[str]:
    return eval_command(out, job) if job.kind == "eval" else fit_command(plan, job)


def training_finished(job: Job) -> bool:
    """A training's outputs are all there: the final LoRA folder LoraExport writes at the end."""
    final = RunDir(job.out).lora_final
    return final.is_dir() and any(final.glob("*.safetensors"))
