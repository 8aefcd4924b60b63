"""`ablate --launcher slurm`: every job of the plan submitted through submitit, with the plan's resources.

The runner (ablation/runner.py) keeps the dependencies for every launcher: a job is submitted once the jobs it needs
have finished, and this launcher waits on its submitit job (a thread per job in flight). SLURM's `afterok` would let
the queue hold the whole graph, but a failed stage 1 would leave its stage 2 and evaluations pending for ever
(DependencyNeverSatisfied), submitit's local executor has no dependencies (the tests run the same path on it), and
the markers, the blocked-job report and the refusal of another plan's folder would need a second implementation.
The cost: the driver must stay alive (a login-node tmux or a small CPU job), and a dependent queues only when its
dependencies end.

On the node a `JobTask` runs the job's command (jobs.job_command: the same as `--launcher local`), once per task
(trainings on GPUs: one task per GPU, Lightning reads the SLURM variables). On preemption or time-out (submitit's
signal, `signal_delay_s` before the end) its `checkpoint` stops the training and submitit requeues the same task,
whose next start resumes from the run's `last.ckpt` (jobs.resume_flags), as a rerun of the ablation does.
`--launcher submitit-local` runs the same through submitit's local executor (no SLURM; what the tests use).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from pm_lightning.ablation.jobs import Job, build_jobs, job_command
from pm_lightning.ablation.launchers import job_env, log_path, start_job
from pm_lightning.ablation.plan import ClusterSpec, Plan, Resources
from pm_lightning.core.extras import MissingExtra, require
from pm_lightning.core.progress import progress_bar

CLUSTERS = {"slurm": "slurm", "submitit-local": "local"}  # --launcher -> submitit's executor
POLL_S = {"slurm": 30.0, "submitit-local": 1.0}  # seconds between looks at a job (submitit caches sacct)
STOP_S = 60  # a preempted training's process gets this long to end after SIGTERM, then SIGKILL


def with_overrides(spec: ClusterSpec, partition=None, account=None, nodes=None, gpus_per_node=None,
                   time_min=None) -> ClusterSpec:  # fmt: skip
    """The plan's resources with the command line's (None: the plan's); nodes, GPUs and time are the trainings'."""
    train = {k: v for k, v in (("nodes", nodes), ("gpus_per_node", gpus_per_node), ("time_min", time_min)) if v}
    return replace(spec, partition=partition or spec.partition, account=account or spec.account,
                   train=replace(spec.train, **train))  # fmt: skip


def executor_parameters(plan: Plan, spec: ClusterSpec, job: Job) -> dict:
    """submitit's AutoExecutor parameters of one job (the `slurm_` ones are ignored by the local executor)."""
    res: Resources = spec.resources(job.kind)
    params = {
        "name": f"{plan.name}:{job.id}",
        "timeout_min": res.time_min,
        "nodes": res.nodes,
        "tasks_per_node": max(1, res.gpus_per_node),
        "gpus_per_node": res.gpus_per_node,
        "cpus_per_task": res.cpus_per_task,
        "mem_gb": res.mem_gb,
        "slurm_partition": spec.partition,
        "slurm_account": spec.account,
    }
    return {k: v for k, v in params.items() if v is not None}


def device_flags(spec: ClusterSpec, job: Job) -> list[str]:
    """A training on GPUs runs on the devices and nodes it asks for (one task per GPU)."""
    res = spec.resources(job.kind)
    if job.kind == "eval" or not res.gpus_per_node:
        return []
    return ["--trainer.devices", str(res.gpus_per_node), "--trainer.num_nodes", str(res.nodes)]


def describe(spec: ClusterSpec) -> str:
    def one(res: Resources) -> str:
        gpus = f" x {res.gpus_per_node} GPU(s)" if res.gpus_per_node else ""
        return f"{res.nodes} node(s){gpus}, {res.cpus_per_task} CPU(s)/task, {res.time_min} min"

    return f"training: {one(spec.train)}; evaluation: {one(spec.eval)}"


def job_listing(plan: Plan, out: Path, cluster: bool) -> str:
    """`--dry-run`: each job, what it waits for, its command and (on a cluster) what submitit receives."""
    lines = []
    for job in build_jobs(plan, out):
        cmd = job_command(plan, out, job) + (device_flags(plan.cluster, job) if cluster else [])
        lines += [f"{job.id}  (after {', '.join(job.deps) or 'nothing'})", f"  {shlex.join(cmd)}"]
        lines += [f"  submitit: {executor_parameters(plan, plan.cluster, job)}"] if cluster else []
    return "\n".join(lines)


class JobTask:
    """What runs on the node (once per task): the job's process; `checkpoint` is submitit's preemption hook."""

    def __init__(self, job: Job, command: list[str], log: Path, threads: int, seconds_before: float = 0.0):
        self.job, self.command, self.log, self.threads = job, command, Path(log), threads
        self.seconds_before = seconds_before  # run time of the attempts before a requeue
        self._proc, self._start = None, time.monotonic()

    def __call__(self) -> tuple[int, float, bool]:
        """(return code, wall seconds of every attempt, resumed); rank 0 logs to OUT/logs/<job>.log, the other
        ranks to their submitit log."""
        import submitit

        self._start = time.monotonic()
        rank = submitit.JobEnvironment().global_rank
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") if rank == 0 else nullcontext(sys.stdout) as fh:
            self._proc, resumed = start_job(self.job, self.command, fh, job_env(self.threads))
            code = self._proc.wait()
        return code, self.seconds_before + time.monotonic() - self._start, resumed or self.seconds_before > 0

    def checkpoint(self):
        """Preempted or timed out: stop the training (it resumes from its last periodic `last.ckpt`) and requeue
        this task with the time it ran."""
        from submitit.helpers import DelayedSubmission

        if self._proc is not None and self._proc.returncode is None:
            stop_process(self._proc.pid)
        seconds = self.seconds_before + time.monotonic() - self._start
        return DelayedSubmission(JobTask(self.job, self.command, self.log, self.threads, seconds))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_proc": None}


def stop_process(pid: int) -> None:
    """SIGTERM, then SIGKILL after STOP_S; reaped with os.waitpid (this runs in a signal handler that may have
    interrupted Popen.wait, whose lock it cannot take). A process already gone (SLURM signals every process of the
    job: the signal may have ended it, and Popen reaped it) is fine."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        return


class SlurmLauncher:
    """Submits each job through submitit (`cluster`: slurm or local) and waits on it, showing the queue's state."""

    def __init__(self, out: Path, plan: Plan, spec: ClusterSpec, cluster: str = "slurm", print_fn=print):
        try:
            submitit = require("submitit", f"--launcher {cluster}")
        except MissingExtra as err:
            raise SystemExit(f"error: {err}") from None
        if cluster == "slurm" and submitit.SlurmExecutor.affinity() < 0:
            raise SystemExit("error: --launcher slurm: no `srun` on PATH; run it on the cluster's login node "
                             "(--launcher submitit-local tries the same path on this machine)")  # fmt: skip
        self.out, self.plan, self.spec, self.cluster = Path(out), plan, spec, cluster
        self.poll_s, self.print = POLL_S[cluster], print_fn
        self._jobs: dict[str, object] = {}  # job id -> its submitit job
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()
        self._bar = None  # made at the first job: after the command's first lines

    def extra_args(self, job: Job) -> list[str]:
        return device_flags(self.spec, job)

    def executor(self, job: Job):
        import submitit

        executor = submitit.AutoExecutor(folder=self.out / "slurm" / "%j", cluster=CLUSTERS[self.cluster])
        executor.update_parameters(**executor_parameters(self.plan, self.spec, job))
        return executor

    def execute(self, job: Job, command: list[str]) -> tuple[int, float, bool]:
        threads = self.spec.resources(job.kind).cpus_per_task
        submitted = self.executor(job).submit(JobTask(job, command, log_path(self.out, job), threads))
        with self._lock:
            self._jobs[job.id] = submitted
        self.print(f"submitted {job.id}: {self.cluster} job {submitted.job_id} (its logs: {self.out / 'slurm'}/)")
        while not submitted.done():
            self._show(job.id, submitted.state)
            time.sleep(self.poll_s)
        self._show(job.id, "ended")
        try:
            results = submitted.results()  # one per task
        except Exception as err:  # the task raised or never ran (cancelled, timed out too often, node failure)
            with open(log_path(self.out, job), "a") as fh:
                fh.write(f"\n{self.cluster} job {submitted.job_id} ended without a result: {err}\n")
            return 1, 0.0, False
        code = next((r[0] for r in results if r[0]), 0)
        return code, results[0][1], any(r[2] for r in results)

    def _show(self, job_id: str, state: str) -> None:
        with self._lock:
            self._states[job_id] = state
            counts: dict[str, int] = {}
            for s in self._states.values():
                counts[s] = counts.get(s, 0) + 1
            if self._bar is None:
                self._bar = progress_bar(desc=f"{self.cluster} jobs ended", unit="job")
            self._bar.n = counts.pop("ended", 0)
            self._bar.set_postfix_str(", ".join(f"{s.lower()} {n}" for s, n in sorted(counts.items())))

    def stop_all(self) -> None:
        """Ctrl-C: cancel what is queued or running (the local launcher stops its processes too)."""
        with self._lock:
            for submitted in self._jobs.values():
                if not submitted.done():
                    submitted.cancel(check=False)
