"""Per-domain means as a torchmetrics Metric: summed across ranks correctly (sums and counts, not means)."""

from __future__ import annotations

import torch
from torchmetrics import Metric

UNSEEN_NAME = "unseen"


class PerDomainMean(Metric):
    """Mean of a per-sample value per domain name; names outside the list count as `unseen`.

    States are per-domain sums and counts reduced by summation, so the result over N ranks equals the mean over
    all their samples, whatever the split. `compute()` returns only the domains that saw a sample on any rank.
    """

    full_state_update = False

    def __init__(self, names: list[str]):
        super().__init__()
        self.names = list(dict.fromkeys([*names, UNSEEN_NAME]))
        self._index = {name: i for i, name in enumerate(self.names)}
        self.add_state("total", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, domain_names: list[str]) -> None:
        """values (B,), one domain name per sample."""
        unseen = self._index[UNSEEN_NAME]
        index = torch.tensor([self._index.get(n, unseen) for n in domain_names], device=self.total.device)  # (B,)
        self.total.index_add_(0, index, values.detach().to(self.total))
        self.count.index_add_(0, index, torch.ones_like(index, dtype=self.count.dtype))

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-domain means over every rank; also sets `overall`, the mean over all samples of all domains."""
        self.overall = (self.total.sum() / self.count.sum().clamp(min=1)).float()
        return {n: (self.total[i] / self.count[i]).float() for i, n in enumerate(self.names) if self.count[i] > 0}
