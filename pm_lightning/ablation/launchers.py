"""Where a job's process runs: `LocalLauncher` starts it on this machine (`--launcher local`, the default);
`ablation/slurm.py` submits it through submitit (`--launcher slurm`). Both run the same command (jobs.job_command)
with the same environment and log; the runner (ablation/runner.py) decides when, from the dependencies.

A launcher has `execute(job, command) -> (return code, wall seconds, resumed)`, `extra_args(job)` (flags its
jobs need on top of the plan's command) and `stop_all()` (on Ctrl-C)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pm_lightning
from pm_lightning.ablation.jobs import Job, resume_flags

CHECKOUT = Path(pm_lightning.__file__).resolve().parents[1]  # this checkout, not another install


def job_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a job's process: `base` (default this one) with this checkout first on PYTHONPATH and
    `threads` torch threads."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT), *filter(None, [env.get("PYTHONPATH")])])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("WANDB_SILENT", "true")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def log_path(out: Path, job: Job) -> Path:
    return Path(out) / "logs" / job.marker_name.replace(".json", ".log")


def start_job(job: Job, command: list[str], log, env: dict[str, str]) -> tuple[subprocess.Popen, bool]:
    """Start a job's process (output appended to the open `log`), an interrupted training resumed from its
    `last.ckpt`; (the process, whether it resumes)."""
    extra = resume_flags(job.out) if job.kind != "eval" else []
    log.write(f"\n$ {' '.join(command + extra)}\n")
    log.flush()
    proc = subprocess.Popen(command + extra, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=str(CHECKOUT))  # fmt: skip
    return proc, bool(extra)


class LocalLauncher:
    """Each job a process on this machine, `threads` torch threads each."""

    def __init__(self, out: Path, threads: int = 1):
        self.out, self.threads = Path(out), threads
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def extra_args(self, job: Job) -> list[str]:
        return []

    def execute(self, job: Job, command: list[str]) -> tuple[int, float, bool]:
        """Run one job's process (output to OUT/logs/<job>.log); (return code, wall seconds, resumed)."""
        log = log_path(self.out, job)
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with open(log, "a") as fh:
            proc, resumed = start_job(job, command, fh, job_env(self.threads))
            with self._lock:
                self._procs[job.id] = proc
            code = proc.wait()
            with self._lock:
                self._procs.pop(job.id, None)
        return code, time.monotonic() - start, resumed

    def stop_all(self) -> None:
        with self._lock:
            for proc in self._procs.values():
                proc.terminate()
