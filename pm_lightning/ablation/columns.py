"""The metrics an ablation reports: key -> header, number format, and which direction is better.

The sample metrics come from `eval/metric_registry.py` (one definition each); the rest (parameters, edits,
ground-truth rates, training time) are the ablation's own.

Per-domain metrics are `<metric>/<domain>` (e.g. `align/lego`); `unseen_<metric>` is the mean over the held-out
domains, the plain key the mean over the training domains (eval/sample_table's per-domain means, averaged).
"""

from __future__ import annotations

from dataclasses import dataclass

from pm_lightning.eval.metric_registry import METRICS


@dataclass(frozen=True)
class Column:
    header: str
    fmt: str  # format spec, or "count" (1.23M / 4.19B)
    better: str | None  # "higher", "lower", or None (a cost or a count, no direction)


# the sample metrics (eval/metric_registry.py): sample-table key -> ablation key, and their columns
FROM_SAMPLE_TABLE = {m.key: m.ablation_key for m in METRICS}
SCORES = {m.ablation_key: Column(m.ablation_header, m.fmt, m.better) for m in METRICS}
COLUMNS: dict[str, Column] = {
    "params_tiny": Column("Params (tiny)", "count", None),
    "params_flux": Column("Params (FLUX.1-dev)", "count", None),
    **SCORES,
    **{f"unseen_{k}": Column(f"{c.header} (held out)", c.fmt, c.better) for k, c in SCORES.items()},
    "inserted": Column("Inserted / sample", ".2f", None),
    "deleted": Column("Deleted / sample", ".2f", None),
    "truth_untouched_edited": Column("GT: untouched edited", ".1%", "lower"),
    "truth_removal_found": Column("GT: removal found", ".1%", "higher"),
    "truth_duplicate_deleted": Column("GT: duplicate deleted", ".1%", "higher"),
    "truth_two_removed_found": Column("GT: two removed, found", ".1%", "higher"),
    "train_s": Column("Train (s)", ".0f", None),
}
TRUTH_KEYS = {  # eval/adaptive_truth.outcomes keys -> ablation keys
    "untouched_edited": "truth_untouched_edited",
    "removal_found": "truth_removal_found",
    "duplicate_deleted": "truth_duplicate_deleted",
    "two_removed_found": "truth_two_removed_found",
}


def column(key: str) -> Column:
    """The column of a metric key, per-domain keys (`align/lego`) included; KeyError when unknown."""
    base, _, domain = key.partition("/")
    if domain:
        c = SCORES[base]
        return Column(f"{c.header} {domain}", c.fmt, c.better)
    return COLUMNS[key]


def is_metric(key: str) -> bool:
    try:
        column(key)
    except KeyError:
        return False
    return True


def format_value(key: str, value: float | None) -> str:
    """One table cell (no spread): counts as 1.23M / 4.19B, the rest with the column's format."""
    if value is None:
        return "-"
    fmt = column(key).fmt
    if fmt == "count":
        return f"{value / 1e9:.2f}B" if value >= 1e9 else f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value:,.0f}"
    return format(value, fmt)
