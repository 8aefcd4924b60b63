"""FLUX.1-dev's depth on CPU: 19 double + 38 single blocks at the tiny width (4 heads x 32), alignment at blocks
4/9/14/19/29, experiments/fabric_toys.yaml's adapter (masked, rank 64, alpha 64, mask fraction 0.3), trained 2 steps
under DDP and under a sharded strategy: the adapters in `last.ckpt` agree, and training moved them away from their
initial values (so the agreement is not that of two untouched copies).

CI's slow tier runs both: DDP against FSDP2 on 2 gloo processes (57 block units), and DDP against HSDP on 4 gloo
processes as 2 "nodes" x 2 (`shard_size: 2`)."""

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
from tests.test_hsdp import assert_placed_2d

pytestmark = pytest.mark.slow
DDP = str(REPO / "experiments" / "strategies" / "ddp.yaml")
HSDP = str(REPO / "experiments" / "strategies" / "hsdp.yaml")
DEV = VARIANTS["flux-dev"].transformer_config
BLOCKS = DEV["num_layers"] + DEV["num_single_layers"]
TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}  # tests/test_fsdp2.py's FSDP2-vs-DDP comparison
SHARD_PROBE = "--trainer.callbacks+=tests.ddp_probe.ShardProbe"
REPLICA_PROBE = "--trainer.callbacks+=tests.ddp_probe.ReplicaProbe"


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


def train(tmp_path: Path, base: str, shards: dict, *args: str, devices: int) -> dict[str, torch.Tensor]:
    """The real-scale run in `tmp_path` (its dumps in `tmp_path/dump`); the adapters of its `last.ckpt`."""
    fit_2proc(real_scale_config(tmp_path, base, shards), *args, devices=devices)
    return adapters(tmp_path / "run")


def assert_agree_and_moved(sharded: dict[str, torch.Tensor], ddp: dict[str, torch.Tensor], dump: Path) -> None:
    """The sharded run's adapters equal DDP's to TOLERANCE, and every trainable tensor of DDP's (each A, B and gate
    table) moved beyond it from its value before the first step (ReplicaProbe's dump of rank 0)."""
    assert sharded.keys() == ddp.keys() and ddp
    for key, value in ddp.items():
        torch.testing.assert_close(sharded[key], value, **TOLERANCE, msg=key)
    before = torch.load(dump / "replica-rank0.pt")["before"]  # named in the transformer, not in the module
    first = next(iter(before))
    prefix = next(k for k in ddp if k.endswith(f".{first}"))[: -len(first)]
    initial = {prefix + name: value for name, value in before.items()}
    assert initial.keys() <= ddp.keys()
    assert {"lora_A", "lora_B", "lora_gate"} <= {part for key in initial for part in key.split(".")}
    unmoved = [k for k, v in initial.items() if torch.allclose(ddp[k], v, **TOLERANCE)]
    assert not unmoved, f"{len(unmoved)} of {len(initial)} trainable tensors did not move: {unmoved[:3]}"


def test_full_depth_ddp_and_fsdp2_agree(tmp_path, full_depth_base, tiny_shards):
    """2 processes, batch 2 per rank: FSDP2's 57 units hold DTensors, and its adapters equal DDP's, which all moved
    (the moved check seen red by hand: given the values before the first step as both runs' adapters, it names
    1102 of 1102 trainable tensors as unmoved)."""
    assert TINY_FLUX_TRANSFORMER["num_layers"] != DEV["num_layers"]  # the depth is FLUX.1-dev's, not the tiny one's
    align = yaml.safe_load(real_scale_config(tmp_path / "cfg", full_depth_base, tiny_shards).read_text())
    hooked = AlignmentConfig(**align["model"]["init_args"]["alignment"]).resolve(BLOCKS)
    assert hooked == list(VARIANTS["flux-dev"].align_layers)  # 4/9/14/19/29 on these 57 blocks
    ddp = train(tmp_path / "ddp", full_depth_base, tiny_shards, "--config", DDP, REPLICA_PROBE, devices=2)
    fsdp = train(tmp_path / "fsdp", full_depth_base, tiny_shards, "--config", FSDP, SHARD_PROBE, devices=2)
    probe = torch.load(tmp_path / "fsdp" / "dump" / "shard-rank0.pt")
    assert probe["dtensor"] and probe["units"] == BLOCKS
    assert_agree_and_moved(fsdp, ddp, tmp_path / "ddp" / "dump")


def test_full_depth_hsdp_2x2_and_ddp_on_4_agree(tmp_path, full_depth_base, tiny_shards):
    """4 processes, ranks 0, 1 and 2, 3 the shard groups, batch 2 per rank: on every rank every parameter is placed
    (Replicate(), Shard(0)) over 57 units, and the adapters equal DDP's on 4 processes, which all moved."""
    ddp = train(tmp_path / "ddp", full_depth_base, tiny_shards, "--config", DDP, REPLICA_PROBE, devices=4)
    hsdp_args = ("--config", HSDP, "--trainer.strategy.init_args.shard_size", "2", SHARD_PROBE)
    hsdp = train(tmp_path / "hsdp", full_depth_base, tiny_shards, *hsdp_args, devices=4)
    assert_placed_2d(tmp_path / "hsdp" / "dump", units=BLOCKS)
    assert_agree_and_moved(hsdp, ddp, tmp_path / "ddp" / "dump")
