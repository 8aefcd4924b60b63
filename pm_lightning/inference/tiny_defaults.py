"""Default LoRA files for the embedded tiny model: where `make train-stage1/2/recraft` write them.

Read from the tiny experiment configs (`experiments/tiny*.yaml`, found through `core.paths`), so moving a
run root in a config moves the default here too.
"""

from __future__ import annotations

from pathlib import Path

from pm_lightning.core.config_files import load_config
from pm_lightning.core.paths import experiment_config, project_path
from pm_lightning.core.run_layout import RunDir
from pm_lightning.models.lora_names import PLAIN, SUFFIX, export_names, served_name

CONFIGS = {"stage1": "tiny", "stage2": "tiny_stage2", "recraft": "tiny_recraft"}


def _yaml(kind: str) -> dict:
    """The tiny experiment config for `kind` (stage1, stage2, recraft) as a dict, with what it extends."""
    return load_config(experiment_config(CONFIGS[kind]))


def _project_path(value: str | None) -> Path | None:
    return project_path(value) if value else None


def lora_dir(kind: str) -> Path:
    """`<trainer.default_root_dir>/lora/final` of the tiny config for `kind` (where LoraExport writes at the end)."""
    root = _yaml(kind).get("trainer", {}).get("default_root_dir", f"runs/{CONFIGS[kind]}")
    return RunDir(_project_path(root)).lora_final


def training_domains() -> list[str]:
    """The stage-1 tiny config's domain list (data.domains)."""
    return list(_yaml("stage1").get("data", {}).get("domains", []))


def default_lora(kind: str, domain: str | None = None) -> Path:
    """Default LoRA file (trained or not yet): stage1 -> the file of its export that serves `domain` (the domain's
    own for a training domain, else unseen.safetensors; models/lora_names.py), stage2 / recraft -> lora.safetensors."""
    if kind == "stage1":
        adapter = _yaml("stage1").get("model", {}).get("init_args", {}).get("adapter", {}).get("kind", "masked")
        name = served_name(domain, export_names(adapter, training_domains()))
        return lora_dir("stage1") / f"{name}{SUFFIX['diffusers']}"
    return lora_dir(kind) / f"{PLAIN}{SUFFIX['diffusers']}"


def fused_stage1(kind: str) -> Path | None:
    """The stage-1 file the tiny stage-2 / ReCraft config fuses under its LoRA (model.init_args.stage1)."""
    return _project_path(_yaml(kind).get("model", {}).get("init_args", {}).get("stage1"))
