"""FLUX.1-dev's depth on CPU: 19 double + 38 single blocks at the tiny width (4 heads x 32), alignment at blocks
4/9/14/19/29, experiments/fabric_toys.yaml's adapter (masked, rank 64, alpha 64, mask fraction 0.3), trained 2 steps
on 2 gloo processes under DDP and under FSDP2 (57 block units): the adapters agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from pm_lightning.models.alignment import AlignmentConfig
from pm_lightning.models.variants import TINY_FLUX_TRANSFORMER, VARIANTS
from tests.conftest import REPO
from tests.test_fit import small_config
from tests.test_fsdp2 import FSDP, adapters, fit_2proc

pytestmark = [pytest.mark.slow, pytest.mark.campaign]
DDP = str(REPO / "experiments" / "strategies" / "ddp.yaml")
DEV = VARIANTS["flux-dev"].transformer_config


@pytest.fixture(scope="module")
def full_depth_base(tmp_path_factory) -> str:
    """A random pipeline of the tiny Flux's components with FLUX.1-dev's block counts."""
    from pm_lightning.tiny.flux_components import TinyFluxConfig, build_pipeline
    from pm_lightning.tiny.frame_pools import tokenizer_texts

    cfg = TinyFluxConfig()
    cfg.transformer.update(num_layers=DEV["num_layers"], num_single_layers=DEV["num_single_layers"])
    out = tmp_path_factory.mktemp("full-depth")
    torch.manual_seed(0)
    build_pipeline(cfg, tokenizer_texts(20)).save_pretrained(out)
    return str(out)


def real_scale_config(tmp_path: Path, base: str, shards: dict) -> Path:
    """test_fit's small run (96-px grids, batch 2, CAME) with fabric_toys.yaml's adapter and alignment."""
    real = yaml.safe_load((REPO / "experiments" / "fabric_toys.yaml").read_text())["model"]["init_args"]
    return small_config(tmp_path, base, shards, max_steps=2, adapter=real["adapter"], alignment=real["alignment"])


def test_full_depth_ddp_and_fsdp2_agree(tmp_path, full_depth_base, tiny_shards, monkeypatch):
    assert TINY_FLUX_TRANSFORMER["num_layers"] != DEV["num_layers"]  # the depth is FLUX.1-dev's, not the tiny one's
    align = yaml.safe_load(real_scale_config(tmp_path / "cfg", full_depth_base, tiny_shards).read_text())
    blocks = DEV["num_layers"] + DEV["num_single_layers"]
    hooked = AlignmentConfig(**align["model"]["init_args"]["alignment"]).resolve(blocks)
    assert hooked == list(VARIANTS["flux-dev"].align_layers)  # 4/9/14/19/29 on these 57 blocks
    runs = {}
    for name, strategy, probe in (
        ("ddp", DDP, []),
        ("fsdp", FSDP, ["--trainer.callbacks+=tests.ddp_probe.ShardProbe"]),
    ):
        cfg = real_scale_config(tmp_path / name, full_depth_base, tiny_shards)
        fit_2proc(cfg, "--config", strategy, *probe)
        runs[name] = adapters(tmp_path / name / "run")
    probe = torch.load(tmp_path / "fsdp" / "dump" / "shard-rank0.pt")
    assert probe["dtensor"] and probe["units"] == blocks
    assert runs["ddp"].keys() == runs["fsdp"].keys() and runs["ddp"]
    for key, value in runs["ddp"].items():  # the tolerance of tests/test_fsdp2.py's comparison
        torch.testing.assert_close(runs["fsdp"][key], value, rtol=1e-4, atol=1e-6, msg=key)
