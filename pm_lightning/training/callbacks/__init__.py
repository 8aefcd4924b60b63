"""Lightning callbacks: checkpoints in the run directory, sample grids, their evaluation, LoRA export, the config."""

from pm_lightning.training.callbacks.checkpoint import RunCheckpoint
from pm_lightning.training.callbacks.config import SaveConfigWithCheckpoints
from pm_lightning.training.callbacks.evaluation import EvaluationCallback
from pm_lightning.training.callbacks.lora_export import LoraExport
from pm_lightning.training.callbacks.samples import SampleGrids

__all__ = ["EvaluationCallback", "LoraExport", "RunCheckpoint", "SampleGrids", "SaveConfigWithCheckpoints"]
