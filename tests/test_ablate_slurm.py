"""`python -m pm_lightning.ablate --launcher slurm`: the resources submitit receives (plan, command-line overrides, the
sbatch file it would submit), and, through submitit's local executor (`--launcher submitit-local`, the same code
path without SLURM), a training preempted mid-way, requeued by submitit and resumed from its checkpoint, then the
whole ablation killed mid-job and rerun, ending with the figures of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pm_lightning.ablation.jobs import build_jobs
from pm_lightning.ablation.plan import PlanError, load_plan, parse_plan, select
from pm_lightning.ablation.slurm import executor_parameters, with_overrides
from tests.ablation_fakes import PLAN, plan_data
from tests.conftest import REPO

FLUX_PLAN = REPO / "experiments" / "ablations" / "plans" / "fabric_toys.yaml"


def flux_jobs(**overrides):
    plan = select(load_plan(FLUX_PLAN), ["full"], [0])
    plan.cluster = with_overrides(plan.cluster, **overrides)
    return plan, {j.id: j for j in build_jobs(plan, Path("/o"))}


def test_the_flux_plan_asks_8_gpus_per_training_and_the_command_line_overrides_it():
    plan, jobs = flux_jobs()
    train = executor_parameters(plan, plan.cluster, jobs["stage1/masked_align/seed-0"])
    assert train["gpus_per_node"] == 8 and train["tasks_per_node"] == 8 and train["nodes"] == 1  # a task per GPU
    assert "slurm_partition" not in train  # none in the plan: the cluster's default
    evaluation = executor_parameters(plan, plan.cluster, jobs["eval/full/seed-0"])
    assert (evaluation["gpus_per_node"], evaluation["tasks_per_node"]) == (1, 1)

    plan, jobs = flux_jobs(partition="h100", account="proj", nodes=2, gpus_per_node=4, time_min=90)
    stage2 = executor_parameters(plan, plan.cluster, jobs["stage2/masked_align/seed-0"])
    assert {k: stage2[k] for k in ("nodes", "gpus_per_node", "tasks_per_node", "timeout_min")} == {
        "nodes": 2, "gpus_per_node": 4, "tasks_per_node": 4, "timeout_min": 90}  # fmt: skip
    assert (stage2["slurm_partition"], stage2["slurm_account"]) == ("h100", "proj")
    evaluation = executor_parameters(plan, plan.cluster, jobs["eval/full/seed-0"])
    assert evaluation["nodes"] == 1 and evaluation["timeout_min"] == plan.cluster.eval.time_min  # trainings only


def test_the_sbatch_file_submitit_writes_carries_the_resources(tmp_path, monkeypatch):
    """The parameters through submitit's own AutoExecutor into the sbatch text it would submit (`srun` faked)."""
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    plan, jobs = flux_jobs(partition="h100", account="proj", time_min=720)
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(**executor_parameters(plan, plan.cluster, jobs["stage1/masked_align/seed-0"]))
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--gpus-per-node=8", "--ntasks-per-node=8", "--nodes=1", "--cpus-per-task=8", "--time=720",
                 "--partition=h100", "--account=proj", "--signal=USR2@90"):  # fmt: skip
        assert f"#SBATCH {line}" in sbatch


def test_the_documented_cluster_command_dry_run_prints_each_jobs_resources_and_devices(capsys):
    from pm_lightning.ablate import main

    argv = ["--plan", str(FLUX_PLAN), "--launcher", "slurm", "--dry-run", "--rows", "full", "--seeds", "0",
            "--partition", "h100", "--gpus-per-node", "4", "--nodes", "2"]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    blocks = stdout.split("\n")
    stage1 = blocks[blocks.index("stage1/masked_align/seed-0  (after nothing)") + 1 :][:2]
    assert "--trainer.devices 4 --trainer.num_nodes 2" in stage1[0]  # Lightning runs on what the job asks for
    assert "'gpus_per_node': 4" in stage1[1] and "'slurm_partition': 'h100'" in stage1[1]
    assert "eval/full/seed-0  (after stage1/masked_align/seed-0, stage2/masked_align/seed-0)" in stdout


def test_wrong_cluster_keys_fail_at_load():
    data = plan_data()
    data["cluster"] = {"train": {"gpus": 8}}
    with pytest.raises(PlanError, match="unknown key cluster.train.gpus; known: .*gpus_per_node"):
        parse_plan(data, str(PLAN))
    data["cluster"] = {"eval": {"nodes": 2}}
    with pytest.raises(PlanError, match="cluster.eval.nodes: an evaluation runs on one node"):
        parse_plan(data, str(PLAN))


# ---------------------------------------------------------------- through submitit's local executor


def test_a_job_through_submitit_returns_its_code_time_and_output(tmp_path):
    """SlurmLauncher.execute on submitit's local executor: the task runs the command, its output lands in the job's
    log, its exit code and run time come back to the runner, the bar counts it ended."""
    from pm_lightning.ablation.jobs import Job
    from pm_lightning.ablation.slurm import SlurmLauncher

    plan = load_plan(PLAN)
    launcher = SlurmLauncher(tmp_path, plan, plan.cluster, "submitit-local", print_fn=lambda s: None)
    job = Job("eval/base/seed-0", "eval", "base", 0, tmp_path / "eval")
    code, seconds, resumed = launcher.execute(job, [sys.executable, "-c", "print('hello from the node'); exit(3)"])
    assert (code, resumed) == (3, False) and 0 < seconds < 60
    assert "hello from the node" in (tmp_path / "logs" / "eval__base__seed-0.log").read_text()
    assert launcher._bar.n == 1


def small_plan(folder: Path) -> Path:
    """The tiny plan's `lora` row, --quick: 4 steps with a checkpoint every 2, evaluated on one domain."""
    ckpt = {"trainer": {"callbacks": [
        {"class_path": "pm_lightning.training.callbacks.RunCheckpoint",
         "init_args": {"every_n_train_steps": 2, "save_top_k": -1}},
        {"class_path": "pm_lightning.training.callbacks.LoraExport"}]}}  # fmt: skip
    (folder / "checkpoints.yaml").write_text(yaml.safe_dump(ckpt))
    data = plan_data()
    data["stage1"]["configs"].append(str(folder / "checkpoints.yaml"))
    data["quick"]["stage1"]["args"]["trainer.max_steps"] = 4
    data["quick"]["eval"]["corpus"]["domains"] = ["lego"]
    data["cluster"] = {"train": {"cpus_per_task": 1, "time_min": 9}, "eval": {"cpus_per_task": 1, "time_min": 9}}
    (folder / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder / "plan.yaml"


def ablate(plan: Path, out: Path, launcher: str) -> list[str]:
    return [sys.executable, "-m", "pm_lightning.ablate", "--plan", str(plan), "--quick", "--rows", "lora",
            "--launcher", launcher, "--out", str(out)]  # fmt: skip


def env(out: Path) -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "WANDB_DIR": str(out.parent)}


def processes(*words: str) -> list[int]:
    """Pids whose command line holds every one of `words`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and all(w in cmd for w in words):
            found.append(int(entry.name))
    return found


def wait_for(check, what: str, proc: subprocess.Popen, seconds: float = 900):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not seen (the ablation {'ended' if proc.poll() is not None else 'timed out'})")


def figures(out: Path) -> dict:
    metrics = json.loads((out / "results.json").read_text())["rows"]["lora"]["seeds"]["0"]["metrics"]
    return {k: v for k, v in metrics.items() if k != "train_s"}


@pytest.mark.slow
@pytest.mark.campaign  # 756 s measured on 2 cores shared with other jobs (three short ablations): `make test-kill`
def test_a_preempted_training_is_requeued_and_resumed_and_a_killed_ablation_reruns_to_the_same_results(tmp_path):
    """Preemption: submitit's signal (USR2) to the training's task once its first checkpoint is written; the plan's
    9-minute limit makes submitit count it as a time-out, so only `JobTask.checkpoint` keeps the job alive: checked
    red once by deleting that method (submitit then logs "Job not requeued because: timed-out and not
    checkpointable", the job and the ablation fail, and this test stops at "the evaluation: not seen").
    Then kill -9 of the whole ablation while the evaluation runs; the rerun skips the training and ends with the
    figures of an uninterrupted `--launcher local` run."""
    plan = small_plan(tmp_path)
    reference = subprocess.run(ablate(plan, tmp_path / "ref", "local"), cwd=REPO, env=env(tmp_path / "ref"),
                               capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "cluster"
    run = tmp_path / "cluster" / "train" / "lora" / "seed-0"
    proc = subprocess.Popen(ablate(plan, out, "submitit-local"), cwd=REPO, env=env(out), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: (run / "checkpoints" / "last.ckpt").is_file(), "the first checkpoint", proc)
        (task,) = processes("submitit.core._submit", str(out / "slurm"))
        os.kill(task, signal.SIGUSR2)  # what SLURM sends before a time-out (submitit's --signal=USR2@90)
        wait_for(lambda: processes("pm_lightning.ablate", "--run-job", str(out)), "the evaluation", proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the ablation, its submitit controllers and jobs
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (out / "logs" / "stage1__lora__seed-0.log").read_text()
    assert log.count("\n$ ") == 2 and "--ckpt_path last" in log.split("\n$ ")[2]  # requeued once, resumed
    assert not (out / "results.json").exists()

    rerun = subprocess.run(ablate(plan, out, "submitit-local"), cwd=REPO, env=env(out), capture_output=True,
                           text=True, timeout=1200)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "stage1/lora/seed-0: finished before" in rerun.stdout and "started eval/lora/seed-0" in rerun.stdout
    assert json.loads((out / "jobs" / "stage1__lora__seed-0.json").read_text())["resumed"] is True
    want = figures(tmp_path / "ref")
    assert figures(out) == {k: pytest.approx(v, rel=1e-5, abs=1e-6) for k, v in want.items()}
