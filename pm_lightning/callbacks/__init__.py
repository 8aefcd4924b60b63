"""Lightning callbacks: sample grids, their evaluation, LoRA export, the resolved config in every checkpoint."""

from pm_lightning.callbacks.config import SaveConfigWithCheckpoints
from pm_lightning.callbacks.evaluation import EvaluationCallback
from pm_lightning.callbacks.export import LoraExport
from pm_lightning.callbacks.samples import SampleGrids

__all__ = ["EvaluationCallback", "LoraExport", "SampleGrids", "SaveConfigWithCheckpoints"]
