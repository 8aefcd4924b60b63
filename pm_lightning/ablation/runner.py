"""Running the jobs: each in its own process (here, or submitted by a launcher: ablation/launchers.py, slurm.py),
`--jobs N` at once, finished ones skipped, progress and time left.

A finished job leaves a marker (OUT/jobs/<job>.json: its command, wall time, when). On a rerun a job with a
marker is skipped; a marker made by another command (the plan changed) stops the run before any work, naming
the job and both commands. An interrupted training is resumed from its `last.ckpt` (or started over when it
left none); an interrupted evaluation runs again.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from pm_lightning.ablation.jobs import Job, training_finished
from pm_lightning.ablation.launchers import LocalLauncher, log_path
from pm_lightning.core.atomic import atomic_path


class PlanChanged(RuntimeError):
    """The output folder holds results of another plan."""


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # finished in an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # job -> log file
    blocked: list[str] = field(default_factory=list)  # a dependency failed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def marker_path(out: Path, job: Job) -> Path:
    return Path(out) / "jobs" / job.marker_name


def read_marker(out: Path, job: Job) -> dict | None:
    path = marker_path(out, job)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


METADATA_FLAGS = ("--trainer.logger.init_args.tags",)  # W&B tags list the selected rows that use a training


def comparable(cmd: list[str]) -> list[str]:
    """A command without the interpreter path (a moved venv is the same plan) and without its W&B tags (they name
    the rows of the current selection that use the job: `--rows` a subset is the same training)."""
    out, skip = [], False
    for arg in cmd[1:]:
        if skip:
            skip = False
        elif arg in METADATA_FLAGS:
            skip = True
        else:
            out.append(arg)
    return out


def is_finished(out: Path, job: Job, command: list[str]) -> bool:
    """The job has a marker made by the same command (and, for a training, its final LoRA folder)."""
    marker = read_marker(out, job)
    if marker is None:
        return False
    if comparable(marker["command"]) != comparable(command):
        raise PlanChanged(
            f"{out} holds {job.id} from another plan:\n  then: {' '.join(marker['command'][1:])}\n"
            f"  now:  {' '.join(command[1:])}\nuse another --out, or --start-over to move {out} aside"
        )
    return job.kind == "eval" or training_finished(job)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class Progress:
    """Jobs and (row, seed) pairs done of all, and the time left from the mean wall time of each job kind."""

    def __init__(self, jobs: list[Job], parallel: int, print_fn: Callable[[str], None] = print):
        self.jobs, self.parallel, self.print = jobs, parallel, print_fn
        self.finished: dict[str, float] = {}  # job id -> wall seconds
        self.start = time.monotonic()
        self.pairs = sum(j.kind == "eval" for j in jobs)

    def time_left(self) -> float | None:
        by_kind: dict[str, list[float]] = {}
        for job in self.jobs:
            if job.id in self.finished:
                by_kind.setdefault(job.kind, []).append(self.finished[job.id])
        means = {k: sum(v) / len(v) for k, v in by_kind.items() if v}
        left = [j for j in self.jobs if j.id not in self.finished]
        if any(j.kind not in means for j in left):
            return None
        return sum(means[j.kind] for j in left) / self.parallel

    def line(self, event: str) -> str:
        evals = [j for j in self.jobs if j.kind == "eval"]
        pairs = sum(j.id in self.finished for j in evals)
        rows = {j.row for j in evals}
        complete = sum(all(j.id in self.finished for j in evals if j.row == r) for r in rows)
        elapsed = time.monotonic() - self.start
        return (
            f"[rows {complete}/{len(rows)} | (row, seed) pairs {pairs}/{self.pairs} | jobs {len(self.finished)}/{len(self.jobs)} | "
            f"{fmt_duration(elapsed)} elapsed | ~{fmt_duration(self.time_left())} left] {event}"
        )

    def record(self, job: Job, seconds: float, event: str) -> None:
        self.finished[job.id] = seconds
        self.print(self.line(event))


class Runner:
    """Runs jobs in dependency order, `parallel` at once, through a launcher (default: local processes with `threads`
    torch threads each). The dependencies are kept here, for every launcher: a job is handed to the launcher once
    the jobs it needs have finished, and a failure blocks its dependents before they are started or queued."""

    def __init__(self, out: Path, parallel: int = 1, threads: int = 1, print_fn: Callable[[str], None] = print,
                 launcher=None):  # fmt: skip
        self.out, self.parallel, self.print = Path(out), parallel, print_fn
        self.launcher = launcher or LocalLauncher(out, threads)

    def stop_all(self) -> None:
        self.launcher.stop_all()

    def run(self, jobs: list[Job], commands: dict[str, list[str]], run_fn=None) -> Outcome:
        """Skip finished jobs, run the rest when their dependencies are done; a failure blocks its dependents."""
        run_fn = run_fn or self.launcher.execute
        outcome, progress = Outcome(), Progress(jobs, self.parallel, self.print)
        state: dict[str, str] = {}
        for job in jobs:
            if is_finished(self.out, job, commands[job.id]):
                state[job.id] = "done"
                outcome.skipped.append(job.id)
                progress.record(
                    job, (read_marker(self.out, job) or {}).get("wall_s", 0.0), f"{job.id}: finished before"
                )
        pending = [j for j in jobs if j.id not in state]
        running = {}
        with ThreadPoolExecutor(self.parallel) as pool:
            try:
                while pending or running:
                    for job in list(pending):
                        if any(state.get(d) in ("failed", "blocked") for d in job.deps):
                            state[job.id] = "blocked"
                            outcome.blocked.append(job.id)
                            pending.remove(job)
                            self.print(f"{job.id}: not run, a job it needs failed")
                        elif len(running) < self.parallel and all(state.get(d) == "done" for d in job.deps):
                            pending.remove(job)
                            running[pool.submit(run_fn, job, commands[job.id])] = job
                            self.print(progress.line(f"started {job.id}"))
                    if not running:
                        if pending:  # nothing runs and nothing can start: a dependency is not in the job list
                            raise RuntimeError(f"jobs {[j.id for j in pending]} wait on jobs that are not planned")
                        continue
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        job = running.pop(fut)
                        code, seconds, resumed = fut.result()
                        ok = code == 0 and (job.kind == "eval" or training_finished(job))
                        if ok:
                            self.write_marker(job, commands[job.id], seconds, resumed)
                            state[job.id] = "done"
                            outcome.done.append(job.id)
                            progress.record(job, seconds, f"finished {job.id} in {fmt_duration(seconds)}")
                        else:
                            state[job.id] = "failed"
                            log = log_path(self.out, job)
                            outcome.failed[job.id] = str(log)
                            self.print(f"FAILED {job.id} (exit {code}); its output: {log}")
            except BaseException:
                self.stop_all()
                raise
        return outcome

    def write_marker(self, job: Job, command: list[str], seconds: float, resumed: bool) -> None:
        record = {"id": job.id, "command": command, "wall_s": round(seconds, 2), "resumed": resumed,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0]}  # fmt: skip
        with atomic_path(marker_path(self.out, job)) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
