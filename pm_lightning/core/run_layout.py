"""The layout of a run directory (`trainer.default_root_dir`): every name a run writes under it is spelled here and
nowhere else (tests/test_run_layout.py reads the package for them); writers and readers ask a `RunDir`.

    <run>/checkpoints/            RunCheckpoint; last.ckpt, the resumable copy (always written at the end)
    <run>/lora/<tag>/             LoraExport: one file per domain, README.md, images/ (tag: step-NNNNNN or final)
    <run>/samples/<tag>.png       SampleGrids (EvaluationCallback: also <tag>.json, judge-cache/)
    <run>/wandb/                  AutoWandbLogger (the folder wandb makes under its `dir`)
    <run>/tensorboard/version_N/  RunTensorBoardLogger
    <run>/config.yaml             SaveConfigWithCheckpoints
    <run>/run.lock                RunLock, while the run runs

An ablation's evaluation folder is laid out as a run's (`samples/`, `wandb/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
LORA = "lora"
SAMPLES = "samples"
WANDB = "wandb"
TENSORBOARD = "tensorboard"
CONFIG = "config.yaml"
LOCK = "run.lock"
SHEET = ".png"  # a sample sheet: <tag>.png
FINAL = "final"  # the tag of what the end of training writes (LoRA folder, sample sheet)
RUN_OUTPUTS = (CHECKPOINTS, LORA, SAMPLES, WANDB, TENSORBOARD, CONFIG)  # what `--start_over` moves aside


def step_tag(step: int) -> str:
    """The tag of what optimizer step `step` writes (LoRA folder, sample sheet): `step-000042`."""
    return f"step-{step:06d}"


def sample_sheet(folder: str | Path, tag: str) -> Path:
    """The labelled sample sheet of `tag` in a samples folder (the run's, or a callback's own `dirpath`)."""
    return Path(folder) / f"{tag}{SHEET}"


@dataclass(frozen=True)
class RunDir:
    """One run directory: the path of everything a run writes, by what it is."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunDir:
        """The run a checkpoint file of `<run>/checkpoints/` belongs to."""
        return cls(Path(ckpt).resolve().parent.parent)

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST

    @property
    def loras(self) -> Path:
        """The parent of the LoRA export folders (one per tag)."""
        return self.root / LORA

    def lora(self, tag: str) -> Path:
        """The LoRA export folder of `tag` (`step_tag(step)` or FINAL)."""
        return self.loras / tag

    @property
    def lora_final(self) -> Path:
        """The LoRA files written at the end of training: what inference, the demo and stage 2 read."""
        return self.lora(FINAL)

    @property
    def samples(self) -> Path:
        return self.root / SAMPLES

    def latest_sample_sheet(self, tag: str = FINAL) -> Path | None:
        """The sample sheet of `tag`, else the newest one (by name), else None."""
        if sample_sheet(self.samples, tag).is_file():
            return sample_sheet(self.samples, tag)
        sheets = sorted(self.samples.glob(f"*{SHEET}"))
        return sheets[-1] if sheets else None

    @property
    def wandb(self) -> Path:
        return self.root / WANDB

    @property
    def config(self) -> Path:
        """The resolved config of the run."""
        return self.root / CONFIG

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    def outputs(self) -> list[Path]:
        """What `--start_over` moves aside: every output of an earlier run (not the lock, not a user's files)."""
        return [self.root / name for name in RUN_OUTPUTS]
