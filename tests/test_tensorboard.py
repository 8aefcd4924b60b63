"""TensorBoard as the logger (experiments/loggers/tensorboard.yaml): a fit through the documented overlay writes its
scalars and sample grids into the run directory, and TensorBoard's own reader reads them back (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pm_lightning import fit
from pm_lightning.training.callbacks.samples import labelled_sheet
from tests.test_fit import small_config, with_outputs

OVERLAY = str(Path(__file__).resolve().parents[1] / "experiments" / "loggers" / "tensorboard.yaml")


def read_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = folder.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_the_overlay_logs_scalars_and_sample_grids_into_the_run_directory(tmp_path, tiny_base, tiny_shards, capsys):
    """Sample grids: checked once red by dropping the TensorBoard branch of `training/logged_images.py` (no image
    tags were written; the W&B-only `hasattr(logger, "log_image")` test of before skipped TensorBoard)."""
    cfg = with_outputs(small_config(tmp_path, tiny_base, tiny_shards, max_steps=2), every=2, log_every_n_steps=1)
    run = tmp_path / "moved"
    assert fit.main(["--config", str(cfg), "--config", OVERLAY, "--trainer.default_root_dir", str(run)]) == 0
    folder = run / "tensorboard" / "version_0"  # in the run directory, moved with it
    assert f"TensorBoard:    {folder.resolve()}" in capsys.readouterr().out
    acc = read_events(folder)
    tags = acc.Tags()
    assert {"loss/total", "loss/fm", "loss/align", "train/lr", "train/grad_norm"} <= set(tags["scalars"])
    losses = acc.Scalars("loss/total")
    assert [e.step for e in losses] == [0, 1] and all(np.isfinite(e.value) for e in losses)  # log_every_n_steps 1
    assert "hp_metric" not in tags["scalars"]
    steps = {e.step: e for e in acc.Images("samples/0")}
    assert sorted(steps) == [2]  # the step-2 grid (every_n_steps) and the final one, both at step 2
    logged = np.asarray(Image.open(__import__("io").BytesIO(steps[2].encoded_image_string)).convert("RGB"))
    sheet = np.asarray(Image.open(run / "samples" / "final.png").convert("RGB"))
    cell = np.asarray(labelled_sheet([Image.fromarray(logged)], ["lego"]))
    assert logged.shape == (64, 64, 3) and np.array_equal(sheet[14:], cell[14:])  # the grid of the samples sheet
    text = acc.Tensors("samples/captions/text_summary")
    assert "lego: a lego tower" in text[-1].tensor_proto.string_val[0].decode()
