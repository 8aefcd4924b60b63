"""Stand-ins for the ablation tests: the tiny plan, stub jobs (no processes) and stub metrics."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pm_lightning.ablation.jobs import Job, build_jobs
from pm_lightning.ablation.plan import load_plan, select
from pm_lightning.ablation.runner import Runner
from tests.conftest import REPO

PLAN = REPO / "experiments" / "ablations" / "plans" / "tiny.yaml"


def plan_data() -> dict:
    return yaml.safe_load(PLAN.read_text())


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


def fake_metrics(row: str, seed: int) -> dict:
    """Deterministic stand-in scores: masked_align clearly ahead on Align; full vs stage 1 on the Coh proxy +0.005, +0.006,
    +0.007 on seeds 0-2, consistent across seeds (paired) yet inside either row's seed spread (sd 0.01)."""
    base = {"base": 40.0, "lora": 50.0, "masked_align": 60.0, "full": 60.0}[row]
    noise = [0.0, 2.0, -2.0][seed]
    m = {"align": base + noise, "align/lego": base + noise + 1, "align/origami": base - 10, "unseen_align": base - 10,
         "coh_proxy": 0.5 + 0.01 * seed + (0.005 + 0.001 * seed if row == "full" else 0.0), "gt_sim": 0.7}  # fmt: skip
    if row == "full":
        m.update(truth_removal_found=0.2, inserted=0.5)
    return m


INSERTED_RGB = (255, 0, 255)
"""The colour of the frame a fake `full` sample's adaptive steps inserted (in its final frames, not in its grid)."""


def write_fake_sample(folder: Path, seed: int, edited: bool) -> None:
    """A sample folder as `generate` writes it: a 2 x 2 grid of four 64-px frames, frames/, report.json; `edited`:
    the adaptive steps inserted one frame (INSERTED_RGB) into the final frames after the second."""
    from PIL import Image

    from pm_lightning.data.grid import frames_to_grid

    frames = [Image.new("RGB", (64, 64), (40 * seed, 60 * k, 150)) for k in range(4)]
    folder.mkdir(parents=True)
    frames_to_grid(frames, 2, 2).save(folder / "grid.png")
    final = [*frames[:2], Image.new("RGB", (64, 64), INSERTED_RGB), *frames[2:]] if edited else frames
    (folder / "frames").mkdir()
    for k, frame in enumerate(final):
        frame.save(folder / "frames" / f"{k:02d}.png")
    decisions = [{"action": "insert", "applied": True, "n": 1}] if edited else []
    report = {"prompt": "a lego tower", "domain": "lego", "settings": {"rows": 2, "cols": 2},
              "adaptive": {"rounds": [{"decisions": decisions}]} if edited else None}  # fmt: skip
    (folder / "report.json").write_text(json.dumps(report))


def write_fake_results(plan, out: Path) -> list[Job]:
    jobs, _ = commands_for(plan, out)
    Runner(out, 1, 1, lambda s: None).run(jobs, commands_for(plan, out)[1], StubJobs())
    for job in jobs:
        if job.kind == "eval":
            job.out.mkdir(parents=True, exist_ok=True)
            samples = job.out / "samples" / "lego-00"
            write_fake_sample(samples, job.seed, edited=job.row == "full")
            record = {"row": job.row, "seed": job.seed, "metrics": fake_metrics(job.row, job.seed),
                      "samples": [{"sample": str(samples), "domain": "lego", "prompt": "a lego tower", "align": 50.0}]}  # fmt: skip
            (job.out / "metrics.json").write_text(json.dumps(record))
    return jobs


def three_seed_plan():
    return select(load_plan(PLAN), ["base", "lora", "masked_align", "full"], [0, 1, 2])
