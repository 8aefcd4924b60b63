"""Experiment configs that overlay another (`extends:`, `core/config_files.py`): one merge rule, followed by `fit`
and by every other reader of a config."""

from __future__ import annotations

import pytest
import yaml

from pm_lightning import fit
from pm_lightning.core.config_files import config_shards, load_config, merge, resolved_config_args
from pm_lightning.inference.tiny_defaults import fused_stage1
from tests.conftest import REPO

EXPERIMENTS = REPO / "experiments"
OVERLAYS = sorted(p for p in EXPERIMENTS.glob("*.yaml") if "extends" in yaml.safe_load(p.read_text()))


def test_mappings_merge_lists_replace_and_a_new_class_replaces_its_mapping():
    base = {"a": {"x": 1, "y": [1, 2]}, "m": {"class_path": "S1", "init_args": {"align": 1, "lr": 2}}}
    top = {"a": {"y": [3]}, "m": {"class_path": "S2", "init_args": {"mode": "dual"}}}
    assert merge(base, top) == {"a": {"x": 1, "y": [3]}, "m": {"class_path": "S2", "init_args": {"mode": "dual"}}}
    same = {"m": {"class_path": "S1", "init_args": {"lr": 3}}}
    assert merge(base, same)["m"] == {"class_path": "S1", "init_args": {"align": 1, "lr": 3}}
    assert base["a"] == {"x": 1, "y": [1, 2]}  # inputs untouched


def test_chains_are_followed_and_loops_or_missing_bases_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("x: 1\ny: {k: 1}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ny: {j: 2}\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\nx: 3\n")
    assert load_config(tmp_path / "c.yaml") == {"x": 3, "y": {"k": 1, "j": 2}}
    (tmp_path / "a.yaml").write_text("extends: c.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(tmp_path / "d.yaml")


def test_the_stage2_and_recraft_configs_are_overlays():
    names = {p.name for p in OVERLAYS}
    assert {"tiny_stage2.yaml", "tiny_recraft.yaml", "fabric_toys_stage2.yaml", "fabric_toys_recraft.yaml"} <= names


@pytest.mark.parametrize("config", OVERLAYS, ids=lambda p: p.name)
def test_fit_reads_an_overlay_as_load_config_resolves_it(config, tmp_path, capsys):
    """`fit --config OVERLAY` (the documented command lines) parses to the same config as the resolved file."""
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(load_config(config)))
    printed = []
    for path in (config, flat):
        with pytest.raises(SystemExit) as exit_:
            fit.main(["--config", str(path), "--print_config"])
        assert exit_.value.code == 0
        printed.append(yaml.safe_load(capsys.readouterr().out))
    assert printed[0] == printed[1]
    base = load_config(EXPERIMENTS / yaml.safe_load(config.read_text())["extends"])
    assert printed[0]["trainer"]["precision"] == base["trainer"]["precision"]  # inherited
    if printed[0]["model"]["class_path"] != base["model"]["class_path"]:
        assert "alignment" not in printed[0]["model"]["init_args"]  # the stage-1 model replaced, not merged into


def test_readers_see_what_the_overlay_inherits():
    """The text cache takes the base's shards, the tiny defaults the stage-1 file ReCraft inherits from stage 2."""
    assert config_shards(EXPERIMENTS / "fabric_toys_stage2.yaml") == ["data/makeanything/fabric_toys"]
    assert fused_stage1("recraft") == fused_stage1("stage2") and fused_stage1("recraft").name == "unseen.safetensors"


def test_plain_configs_and_other_flags_pass_through_unchanged():
    args = ["--config", "experiments/tiny.yaml", "--trainer.max_steps", "3", "--config=experiments/ablations/lora.yaml"]
    assert resolved_config_args(args) == args
    resolved = resolved_config_args(["--config", str(EXPERIMENTS / "tiny_recraft.yaml")])
    assert yaml.safe_load(resolved[1])["model"]["init_args"]["mode"] == "recraft"
