"""Trainable parameters of a row, from the parameter accounting (models/param_count.py, meta device): at the
plan's training scale (its configs) and at the paper's scale (FLUX.1-dev, rank 64, 21 domains by default).
A row with stage 2 adds the stage-2 LoRA; the base row trains nothing."""

from __future__ import annotations

from functools import cache

from pm_lightning.ablation.plan import Plan
from pm_lightning.core.paths import project_path
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.param_count import count_parameters, read_configs


@cache
def _count(variant: str, kind: str, adapter: tuple) -> int:
    cfg = AdapterConfig.from_dict({**dict(adapter), "kind": kind})
    return count_parameters(variant, cfg, kinds=(kind,))["trainable"][kind]


def stage_adapter(configs: list[str], args: dict) -> tuple[str, dict]:
    """(variant, adapter settings incl. num_domains) of stacked LightningCLI configs and `--model.init_args.adapter.*`."""
    variant, adapter, n_domains = read_configs([str(project_path(c)) for c in configs])
    prefix = "model.init_args.adapter."
    adapter.update({k[len(prefix) :]: v for k, v in args.items() if k.startswith(prefix)})
    adapter["num_domains"] = n_domains or 1
    return variant or "tiny", adapter


def row_parameters(plan: Plan, row: str) -> dict[str, int]:
    """{"params_tiny", "params_flux"}: the adapters the row trains, at the plan's scale and at the paper's."""
    spec, s1 = plan.rows[row], plan.stage1_row(row)
    if s1 is None:
        return {"params_tiny": 0, "params_flux": 0}
    variant, adapter = stage_adapter(
        [*plan.stage1.configs, plan.rows[s1].overlay], {**plan.stage1.args, **plan.rows[s1].args}
    )
    kind = adapter.pop("kind", "masked")
    big = {"rank": plan.params.rank, "num_domains": plan.params.domains}
    small_n = _count(variant, kind, tuple(sorted(_hashable(adapter).items())))
    flux_n = _count(plan.params.variant, kind, tuple(sorted(big.items())))
    if spec.stage2:
        v2, a2 = stage_adapter(plan.stage2.configs, plan.stage2.args)
        a2.pop("kind", None)
        small_n += _count(v2, "lora", tuple(sorted(_hashable(a2).items())))
        flux_n += _count(plan.params.variant, "lora", (("num_domains", 1), ("rank", plan.params.rank)))
    return {"params_tiny": small_n, "params_flux": flux_n}


def _hashable(adapter: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in adapter.items()}
