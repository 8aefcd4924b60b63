"""GPU presets (experiments/presets/*.yaml) over the FLUX.1-dev configs: each fits its card with at least 10% headroom
by the memory plan (`python -m pm_lightning.memory_plan --config ... --config PRESET`), at every GPU count it is
meant for; the merge the plan reads agrees with fit's own parser; docs/SCALING.md lists each with its figure."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from pm_lightning import fit, memory_plan
from pm_lightning.core import config_files
from pm_lightning.scaling import config_memory

REPO = Path(__file__).resolve().parents[1]
FLUX_CONFIGS = ["fabric_toys", "fabric_toys_stage2", "fabric_toys_recraft", "all_domains"]
PRESETS = {  # preset -> (card GiB, the GPU counts it is for)
    "24gb": (24, (2, 4, 8)),
    "24gb_1gpu": (24, (1,)),
    "48gb": (48, (1, 2, 8)),
    "80gb": (80, (1, 2, 8)),
}


def test_every_preset_is_tested():
    assert sorted(p.stem for p in (REPO / "experiments" / "presets").glob("*.yaml")) == sorted(PRESETS)


@pytest.fixture(scope="module")
def shapes():
    """model_shape once per (variant, adapter): building FLUX.1-dev on the meta device takes seconds."""
    cache: dict = {}
    real = config_memory.model_shape

    def cached(variant, adapter):
        key = (variant, repr(adapter))
        if key not in cache:
            cache[key] = real(variant, adapter)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config_memory, "model_shape", cached)
        yield cache


def plan(config: str, preset: str, gpus: int | None = None) -> dict:
    """The documented command's JSON for `config` + `preset` on the preset's card."""
    args = ["--config", f"experiments/{config}.yaml", "--config", f"experiments/presets/{preset}.yaml"]
    args += ["--card-gib", str(PRESETS[preset][0]), "--json"] + (["--gpus", str(gpus)] if gpus else [])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        memory_plan.main(args)
    return json.loads(out.getvalue())


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("config", FLUX_CONFIGS)
def test_each_preset_fits_its_card_with_headroom(config, preset, shapes, monkeypatch):
    monkeypatch.chdir(REPO)
    for gpus in PRESETS[preset][1]:
        result = plan(config, preset, gpus if preset != "24gb_1gpu" else None)  # 24gb_1gpu sets devices: 1 itself
        (only,) = result["plans"].values()
        assert only["gpus"] == gpus
        assert result["headroom"] >= config_memory.HEADROOM, (config, preset, gpus, only["total"] / 2**30)


def test_the_24gb_preset_needs_two_cards_and_the_single_card_preset_quantizes(shapes, monkeypatch):
    monkeypatch.chdir(REPO)
    assert not plan("fabric_toys", "24gb", 1)["plans"]["fsdp_full_shard"]["fits"]  # FSDP2 on one card shards nothing
    single = plan("fabric_toys", "24gb_1gpu")
    assert single["workload"]["quant"] == "int8" and not single["workload"]["text_encoders"]


def test_docs_list_every_preset_with_the_plans_figure(shapes, monkeypatch):
    """docs/SCALING.md's preset table: one row per preset, its fabric_toys.yaml figure as the plan computes it."""
    monkeypatch.chdir(REPO)
    text = (REPO / "docs" / "SCALING.md").read_text()
    for preset, (_, counts) in PRESETS.items():
        row = next((line for line in text.splitlines() if f"`experiments/presets/{preset}.yaml`" in line), None)
        assert row is not None, f"docs/SCALING.md does not list experiments/presets/{preset}.yaml"
        total = plan("fabric_toys", preset, None if preset == "24gb_1gpu" else counts[-1])["plans"]
        (only,) = total.values()
        assert f"{only['total'] / 2**30:.1f} GiB" in row, row


def test_merge_replaces_init_args_when_the_class_path_changes():
    base = {"strategy": {"class_path": "a.DDPStrategy", "init_args": {"find_unused_parameters": False}}, "devices": 8}
    over = {"strategy": {"class_path": "b.FluxFSDP2Strategy", "init_args": {"reshard_after_forward": True}}}
    assert config_files.merge(base, over) == {
        "strategy": {"class_path": "b.FluxFSDP2Strategy", "init_args": {"reshard_after_forward": True}},
        "devices": 8,
    }
    same = {"strategy": {"class_path": "a.DDPStrategy", "init_args": {"static_graph": True}}}
    merged = config_files.merge(base, same)["strategy"]["init_args"]
    assert merged == {"find_unused_parameters": False, "static_graph": True}


def test_a_quantized_base_under_fsdp_is_refused():
    cfg = config_files.load_configs([REPO / "experiments" / "all_domains.yaml"])
    cfg["model"]["init_args"]["quantize"] = "int8"
    with pytest.raises(ValueError, match="quantize 'int8' trains on one device or under DDP"):
        config_memory.config_load(cfg)


def test_hsdp_is_planned_as_fsdp2_over_one_shard_group():
    """hsdp.yaml on 4 nodes of 8 holds per GPU what fsdp.yaml holds on one node of 8 (the model is sharded over a
    node, replicated across nodes); shard_size overrides the node; flat FSDP2 on 32 GPUs holds less."""
    strategies = REPO / "experiments" / "strategies"

    def plan(strategy: str, devices: int, nodes: int, **init):
        cfg = config_files.load_configs([REPO / "experiments" / "fabric_toys.yaml", strategies / f"{strategy}.yaml"])
        cfg["trainer"].update(devices=devices, num_nodes=nodes)
        cfg["trainer"]["strategy"]["init_args"].update(init)
        return config_memory.plan_config(cfg, 48)[0]

    hsdp, node = plan("hsdp", 8, 4), plan("fsdp", 8, 1)
    assert (hsdp.strategy, hsdp.gpus, hsdp.total) == ("fsdp_full_shard", 8, node.total)
    assert plan("hsdp", 8, 4, shard_size=4).total == plan("fsdp", 4, 1).total > node.total
    assert plan("fsdp", 8, 4).total < node.total


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_merge_reads_what_fit_resolves(preset, capsys, monkeypatch):
    """fit's parser accepts every preset over every FLUX.1-dev config (unknown keys would fail), and the plan's
    reading of the plain YAML merge equals its reading of `fit --print_config` (about 5 s per preset here)."""
    monkeypatch.chdir(REPO)
    for config in FLUX_CONFIGS:
        paths = [f"experiments/{config}.yaml", f"experiments/presets/{preset}.yaml"]
        with pytest.raises(SystemExit) as done:
            fit.main([a for p in paths for a in ("--config", p)] + ["--print_config"])
        assert done.value.code == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert config_memory.config_load(printed) == config_memory.config_load(config_files.load_configs(paths))


def test_preset_headers_name_the_command_that_uses_them():
    for preset in PRESETS:
        text = (REPO / "experiments" / "presets" / f"{preset}.yaml").read_text()
        assert re.search(rf"--config experiments/presets/{preset}\.yaml", text), preset
