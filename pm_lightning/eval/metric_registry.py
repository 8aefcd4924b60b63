"""The metrics of a generated sample, each defined once: how it is computed, its header, format and direction.

`METRICS` is read by the per-domain table (`eval/sample_table.py`: the row keys, columns, headers and number
formats), by the ablations (`ablation/columns.py`: their keys, `<key>/<domain>` and `unseen_<key>`, and which
direction is better) and so by every report built on them (RESULTS.md, the charts, the W&B tables). A new metric is
one `Metric(...)` line below; its value is a function of the sample's features (`SampleFeatures`, computed once per
sample by `sample_table.score_sample`). Definitions: docs/EVALUATION.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pm_lightning.eval.judge import JudgeResult
from pm_lightning.eval.scores import clip_score, coherence_proxy


@dataclass
class SampleFeatures:
    """What a sample's metrics are computed from (one CLIP pass over grid, frames and true frames)."""

    text: torch.Tensor  # (1, D) CLIP text embedding of the prompt
    grid: torch.Tensor  # (1, D) CLIP image embedding of the whole grid
    frames: torch.Tensor  # (T, D) CLIP image embeddings of the frames
    clip: dict[str, float]  # `scores.sequence_proxies` of the frames' CLIP features (+ gt_similarity with truth)
    pixel: dict[str, float]  # `scores.sequence_proxies` of the frames' pixels ("l2")
    judge: JudgeResult | None = None  # the GPT-4o rubric's answer (with --judge)


@dataclass(frozen=True)
class Metric:
    """One metric: its key in a sample's row, its column, and its key in the ablations."""

    key: str
    """The sample table's key (a row of results.json)."""
    header: str
    fmt: str
    """Number format of a table cell."""
    ablation_key: str
    """The ablations' key (per domain `<ablation_key>/<domain>`, held out `unseen_<ablation_key>`)."""
    value: Callable[[SampleFeatures], float | None]
    better: str = "higher"
    judge: bool = False
    """Computed only with the judge (--judge); its column appears only then."""
    needs_truth: bool = False
    """Computed only for a sample with ground-truth frames."""

    @property
    def ablation_header(self) -> str:
        return f"{self.header} (judge)" if self.judge else self.header


def _judged(name: str) -> Callable[[SampleFeatures], float | None]:
    return lambda f: getattr(f.judge, name)


METRICS: tuple[Metric, ...] = (
    Metric("align", "Align", ".2f", "align", lambda f: clip_score(f.grid, f.text).item()),
    Metric(
        "clip_frames",
        "CLIP frames",
        ".2f",
        "clip_frames",
        lambda f: clip_score(f.frames, f.text.expand(len(f.frames), -1)).mean().item(),
    ),
    Metric("accuracy", "Acc", ".2f", "accuracy", _judged("accuracy"), judge=True),
    Metric("coherence", "Coh", ".2f", "coherence", _judged("coherence"), judge=True),
    Metric("usability", "Use", ".2f", "usability", _judged("usability"), judge=True),
    Metric("monotonicity_clip", "Mono", ".3f", "mono", lambda f: f.clip["monotonicity"]),
    Metric("evenness_clip", "Even", ".3f", "even", lambda f: f.clip["evenness"]),
    Metric("monotonicity_pixel", "Mono px", ".3f", "mono_px", lambda f: f.pixel["monotonicity"]),
    Metric("evenness_pixel", "Even px", ".3f", "even_px", lambda f: f.pixel["evenness"]),
    Metric(
        "coh_proxy",
        "Coh proxy",
        ".3f",
        "coh_proxy",
        lambda f: coherence_proxy(f.pixel["monotonicity"], f.pixel["evenness"]),
    ),
    Metric("gt_similarity", "GT sim", ".3f", "gt_sim", lambda f: f.clip["gt_similarity"], needs_truth=True),
)
"""In the order of the table's columns."""
BY_KEY = {m.key: m for m in METRICS}
