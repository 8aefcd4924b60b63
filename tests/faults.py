"""Fault injectors used by the reliability tests, as Lightning callbacks a config can name
(`--trainer.callbacks+=tests.faults.NaNBatch --trainer.callbacks.steps=[1]`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from lightning.pytorch import Callback


class NaNBatch(Callback):
    """Poison the pixels of the batches with these indices (counted over the run's batches)."""

    def __init__(self, batches: list[int]):
        self.batches, self.seen = set(batches), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen in self.batches:
            batch["pixels"].fill_(float("nan"))
        self.seen += 1


class NaNGradient(Callback):
    """Put an inf into one adapter gradient after the backward of these batches (on these ranks only; all by
    default). Under DDP the gradients are already all-reduced then: only the chosen ranks see the inf."""

    def __init__(self, batches: list[int], ranks: list[int] | None = None):
        self.batches, self.ranks, self.seen = set(batches), ranks, 0

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.seen in self.batches and (self.ranks is None or trainer.global_rank in self.ranks):
            grad = next(p.grad for p in pl_module.trainable_parameters() if p.grad is not None)
            grad.view(-1)[0] = float("inf")
        self.seen += 1


class RecordAdapters(Callback):
    """After every batch: optimizer step count and a digest of the adapters, to $PM_RECORD (JSON lines)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        params = pl_module.trainable_parameters()
        row = {
            "rank": trainer.global_rank,
            "skipped": pl_module.nonfinite.skipped,
            "step": trainer.global_step,
            "sum": float(sum(p.detach().double().sum() for p in params)),
            "finite": all(bool(torch.isfinite(p).all()) for p in params),
        }
        with Path(os.environ["PM_RECORD"]).open("a") as f:
            f.write(json.dumps(row) + "\n")


def _die() -> None:
    os.kill(os.getpid(), 9)  # SIGKILL: no cleanup, no finally, no atexit


class KillAt(Callback):
    """SIGKILL this process at a chosen moment of a run (the kill-9 campaign in tests/test_faults_kill.py).

    moment: "backward" (after the backward of optimizer step `step`, before the update), "checkpoint-write" (half of
    the checkpoint of step `step` written), "final-write" (the last step of writing `last.ckpt` at step `step`: its
    rename into place, or, where the save is not atomic and TMPDIR is another filesystem, half-way through the copy
    that moves it there), "lora-write" (half of the first LoRA file of export `tag` written),
    "samples" (while rendering the sample sheet `tag`), "before-last" (the checkpoint of step `step` written, its
    `last.ckpt` not yet: Lightning writes them one after the other), "timer" (`seconds` after optimizer step `step` starts:
    anywhere in that step, its checkpoint, exports or samples, or the next step).
    """

    def __init__(self, moment: str, step: int = 0, tag: str = "", seconds: float = 0.0):
        self.moment, self.step, self.tag, self.seconds = moment, step, tag, seconds

    def setup(self, trainer, pl_module, stage) -> None:
        if self.moment == "checkpoint-write":
            self._patch_checkpoint_write(trainer)
        elif self.moment == "final-write":
            self._patch_final_write(trainer)
        elif self.moment == "lora-write":
            self._patch_lora_write()
        elif self.moment == "before-last":
            self._patch_last_checkpoint(trainer)
        elif self.moment == "samples":
            import pm_lightning.training.callbacks.samples as samples

            real = samples.labelled_sheet
            samples.labelled_sheet = lambda images, labels: (
                _die() if self._tag_now == self.tag else real(images, labels)
            )
            real_render = samples.SampleGrids.render

            def render(cb, trainer, pl_module, tag):
                self._tag_now = tag
                return real_render(cb, trainer, pl_module, tag)

            samples.SampleGrids.render = render

    _tag_now = ""

    def _patch_checkpoint_write(self, trainer) -> None:
        import fsspec.implementations.local as local

        import pm_lightning.training.checkpoint_io as checkpoint_io

        real_write, real_file, killer = local.LocalFileOpener.write, checkpoint_io.write_file, self

        def write(opener, data):  # Lightning's own (fsspec) save
            if trainer.global_step == killer.step and str(opener.path).endswith(".ckpt"):
                real_write(opener, bytes(data)[: len(data) // 2])
                opener.f.flush()
                _die()
            return real_write(opener, data)

        def write_file(path, data):  # the atomic save (training/checkpoint_io.py)
            if trainer.global_step == killer.step:
                real_file(path, bytes(data)[: len(data) // 2])
                _die()
            return real_file(path, data)

        local.LocalFileOpener.write = write
        checkpoint_io.write_file = write_file

    def _patch_final_write(self, trainer) -> None:
        import shutil

        real_replace, real_copyfile, killer = os.replace, shutil.copyfile, self

        def due(dst) -> bool:
            return trainer.global_step == killer.step and str(dst).endswith("last.ckpt")

        def replace(src, dst, **kwargs):  # the atomic save's rename: killed just before it
            if due(dst):
                _die()
            return real_replace(src, dst, **kwargs)

        def copyfile(src, dst, **kwargs):  # fsspec's move from another filesystem's TMPDIR: cut half-way
            if due(dst):
                data = Path(src).read_bytes()
                Path(dst).write_bytes(data[: len(data) // 2])
                _die()
            return real_copyfile(src, dst, **kwargs)

        os.replace, shutil.copyfile = replace, copyfile

    def _patch_last_checkpoint(self, trainer) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        real, killer = ModelCheckpoint._save_last_checkpoint, self

        def save_last(cb, trainer, monitor_candidates):
            if trainer.global_step == killer.step:
                _die()
            return real(cb, trainer, monitor_candidates)

        ModelCheckpoint._save_last_checkpoint = save_last

    def _patch_lora_write(self) -> None:
        from diffusers import FluxPipeline

        real, killer = FluxPipeline.save_lora_weights.__func__, self

        def save(cls, save_directory, *args, weight_name=None, **kwargs):
            if Path(save_directory).name == killer.tag:
                Path(save_directory, weight_name).write_bytes(b"\0" * 1000)  # half a file at the temporary name
                _die()
            return real(cls, save_directory, *args, weight_name=weight_name, **kwargs)

        FluxPipeline.save_lora_weights = classmethod(save)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.moment == "timer" and trainer.global_step == self.step:
            import threading

            threading.Timer(self.seconds, _die).start()

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.moment == "backward" and trainer.global_step == self.step:
            _die()
