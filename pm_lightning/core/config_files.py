"""Experiment config files that overlay another: `extends: <file>` names the config a file builds on.

A file with `extends:` is its base (a path relative to the file's folder) with the file's own keys on top, by one
rule: mappings merge key by key; a mapping whose `class_path` changes is replaced whole (a stage-2 model is not a
stage-1 model with changes); anything else, lists included (the callbacks), is replaced. Chains are followed
(experiments/tiny_recraft.yaml -> tiny_stage2.yaml -> tiny.yaml). Several files merge in order by the same rule, as
LightningCLI merges several `--config` files. `config_shards` / `config_prompts`: the shards and sample prompts of a
config, as the caches read them.

`fit` hands LightningCLI each such file resolved (`resolved_config_args`: LightningCLI accepts a config as YAML text),
and every other reader of an experiment config (`text_cache`, `latent_cache`, `params`, `memory_plan --config`, the
tiny defaults) reads it through `load_config` / `load_configs`, so a run and its caches see the same keys.
"""

from __future__ import annotations

from pathlib import Path

import yaml

EXTENDS = "extends"


def merge(base: dict, top: dict) -> dict:
    """`top` over `base` by the rule above (neither is changed)."""
    if "class_path" in top and top["class_path"] != base.get("class_path"):
        base = {}  # a new class starts from its own init_args
    out = dict(base)
    for key, value in top.items():
        old = out.get(key)
        out[key] = merge(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return out


def load_config(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The config in `path` with what it extends resolved (a loop or a missing base is an error naming the files)."""
    path = Path(path)
    if path.resolve() in _chain:
        raise ValueError(f"config {path} extends itself: {' -> '.join(str(p) for p in (*_chain, path.resolve()))}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} holds no mapping of keys")
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    base = path.parent / parent
    if not base.is_file():
        raise FileNotFoundError(f"config {path}: extends {parent!r}, but {base} is not a file")
    return merge(load_config(base, (*_chain, path.resolve())), data)


def load_configs(paths) -> dict:
    """Several configs merged in order (as `fit --config a.yaml --config b.yaml` merges them)."""
    merged: dict = {}
    for path in paths:
        merged = merge(merged, load_config(path))
    return merged


def extends_another(path: str | Path) -> bool:
    """Whether the config file `path` names a base (`extends:`); False for anything that is not a readable config."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and EXTENDS in data


def resolved_config_args(args: list[str]) -> list[str]:
    """`--config FILE` (or `--config=FILE`) of a file that extends another -> `--config <the resolved YAML>`; every
    other argument as given (LightningCLI then reads and merges the configs itself)."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args) and extends_another(args[i + 1]):
            out += ["--config", yaml.safe_dump(load_config(args[i + 1]), sort_keys=False)]
            i += 2
            continue
        if arg.startswith("--config=") and extends_another(arg.partition("=")[2]):
            out.append("--config=" + yaml.safe_dump(load_config(arg.partition("=")[2]), sort_keys=False))
        else:
            out.append(arg)
        i += 1
    return out


def config_prompts(path: str | Path) -> list[str]:
    """Sample prompts: an experiment config's `SampleGrids` / `EvaluationCallback` captions, or a text file (one
    prompt per line)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    config = load_config(path)
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    prompts = [p for cb in callbacks for p in (cb.get("init_args") or {}).get("prompts") or []]
    return sorted({p["caption"] for p in prompts})


def config_shards(path: str | Path) -> list[str]:
    """The training and validation shard specs of an experiment config (`data.train_shards` / `val_shards`)."""
    data = load_config(path).get("data") or {}
    found = [data.get("train_shards"), data.get("val_shards")]
    return [s for spec in found if spec for s in ([spec] if isinstance(spec, str) else spec)]
