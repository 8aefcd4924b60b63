"""Parameter accounting on the meta device: base transformer vs. trainable adapter parameters per kind.

The transformer is built on ``meta`` (shapes only, no storage) and the real ``add_adapters`` is run
on it, so the count is exactly what training would optimise (tied A and gates counted once, masked
gates included). Which layers are counted, and why: docs/PARAMS.md.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from pm_lightning.core.config_files import load_configs
from pm_lightning.models.adapter_config import KINDS, AdapterConfig
from pm_lightning.models.adapters import adapter_parameters, add_adapters
from pm_lightning.models.backbone import meta_transformer
from pm_lightning.models.variants import VARIANTS


def count_parameters(variant: str, cfg: AdapterConfig, kinds: tuple[str, ...] = KINDS) -> dict:
    """{"base": N, "trainable": {kind: N}, "rank": r, "domains": c} for `variant` with cfg's targets."""
    base = sum(p.numel() for p in meta_transformer(variant).parameters())
    trainable = {}
    for kind in kinds:
        with torch.device("meta"):
            transformer = meta_transformer(variant)
            add_adapters(transformer, replace(cfg, kind=kind))
        trainable[kind] = sum(p.numel() for p in adapter_parameters(transformer))
    return {"base": base, "trainable": trainable, "rank": cfg.rank, "domains": cfg.num_domains}


def format_table(counts: dict) -> str:
    """A plain-text table: trainable parameters per kind, % of the base, % of the asymmetric adapter."""
    base, rows = counts["base"], counts["trainable"]
    asym = rows.get("asymmetric")
    lines = [
        f"base transformer: {base:,} parameters ({base / 1e9:.2f}B); rank {counts['rank']}, {counts['domains']} domains",
        f"{'kind':<12}{'trainable':>16}{'':>10}{'% of base':>11}{'% of asym':>11}",
    ]
    for kind, n in rows.items():
        vs = f"{100 * n / asym:>10.2f}%" if asym else f"{'-':>11}"
        lines.append(f"{kind:<12}{n:>16,}{_short(n):>10}{100 * n / base:>10.2f}%{vs}")
    return "\n".join(lines)


def _short(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def read_configs(paths: list[str]) -> tuple[str | None, dict, int | None]:
    """(variant, adapter dict, number of domains) from LightningCLI YAML files merged in order (`core/config_files.py`)."""
    merged = load_configs(paths)
    model = merged.get("model", {}) or {}
    model = model.get("init_args", model)
    domains = model.get("domains") or (merged.get("data", {}) or {}).get("domains")
    base = model.get("base")
    return (base if base in VARIANTS else None), dict(model.get("adapter") or {}), (len(domains) if domains else None)
