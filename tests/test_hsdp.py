"""HSDP (experiments/strategies/hsdp.yaml) for real: docs/SCALING.md's CPU commands, 4 gloo processes as 2 "nodes"
x 2 (`shard_size: 2`) on the default shards, train with every transformer parameter placed (Replicate(), Shard(0)).

CI's slow tier runs the quick check (one step, no validation): the two replicas hold equal adapter shards after the
step. The campaign tier (`make test-scaling`) runs the full line and ends with the adapters and validation figures
of the same run under DDP on 4 processes: two 4-process runs take minutes on 2 cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_fsdp2 import adapters
from tests.test_scaling_commands import SHARDS, doc_fit_commands, run

pytestmark = pytest.mark.slow
NO_SHARDS = pytest.mark.skipif(
    not (SHARDS / "val" / "index.json").is_file(), reason="no default shards: run `make shards`"
)


def assert_placed_2d(dump: Path, units: int = 6) -> None:
    """ShardProbe's dumps: on every rank every transformer parameter is 2-D, replicated over "replicate" and
    row-sharded over "shard", `units` block units (the tiny Flux's 6 by default), gradients on the adapters only."""
    for rank in range(4):
        probe = torch.load(dump / f"shard-rank{rank}.pt")
        assert probe["dtensor"] and probe["placements"] == ["(Replicate(), Shard(dim=0))"], rank
        assert probe["units"] == units and probe["frozen_with_grad"] == 0 and probe["trainable_with_grad"] > 0


@NO_SHARDS
def test_hsdp_2x2_quick_check_replicas_agree_after_a_step(tmp_path, monkeypatch):
    """Ranks 0, 1 and 2, 3 are the shard groups, 0, 2 and 1, 3 the replica groups; each rank trains on its own
    batch, so two replicas hold equal shards after the step only if their gradient shards were all-reduced.
    Checked red once each (by hand, the same line with a sabotaged strategy or callback): `fully_shard` over the
    shard group only (no replicate dimension) left 52 of 116 shards of ranks 0 and 2 different (and the placements
    `(Shard(dim=0),)`); FSDP2's `set_requires_all_reduce(False)` on every unit left no gradient and nothing moved."""
    (quick,) = doc_fit_commands("HSDP on CPU, the quick check").values()
    assert quick.values("--trainer.devices") == ["4"] and quick.values("--trainer.max_steps") == ["1"]
    monkeypatch.setenv("PM_DUMP_DIR", str(tmp_path / "dump"))
    probes = ("--trainer.callbacks+=tests.ddp_probe.ShardProbe", "--trainer.callbacks+=tests.ddp_probe.ReplicaProbe")
    run(quick, tmp_path / "hsdp", *probes)
    assert_placed_2d(tmp_path / "dump")
    local = [torch.load(tmp_path / "dump" / f"replica-rank{rank}.pt") for rank in range(4)]
    assert local[0]["keys"] and local[0]["keys"] != local[2]["keys"]  # replicas trained on their own samples
    names = local[0]["after"].keys()
    assert names and all(part["after"].keys() == names for part in local)
    assert any(not torch.equal(local[0]["after"][n], local[0]["before"][n]) for n in names)  # the step moved them
    assert any(not torch.equal(local[0]["after"][n], local[1]["after"][n]) for n in names)  # other rows, own shards
    for rank in (0, 1):  # replicas: bit-equal shards
        for n in names:
            assert torch.equal(local[rank]["after"][n], local[rank + 2]["after"][n]), (rank, n)
    assert (tmp_path / "hsdp" / "lora" / "final" / "unseen.safetensors").is_file()
    assert (tmp_path / "hsdp" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.campaign
@NO_SHARDS
def test_hsdp_2x2_doc_command_trains_sharded_within_replicated_across_and_equals_ddp(tmp_path, monkeypatch):
    (hsdp,) = doc_fit_commands("HSDP on CPU").values()
    assert hsdp.values("--trainer.devices") == ["4"] and hsdp.values("--trainer.strategy.init_args.shard_size") == ["2"]
    monkeypatch.setenv("PM_DUMP_DIR", str(tmp_path / "dump"))
    sharded, _ = run(hsdp, tmp_path / "hsdp", "--trainer.callbacks+=tests.ddp_probe.ShardProbe")
    assert_placed_2d(tmp_path / "dump")

    # the same command under DDP (ddp.yaml instead of hsdp.yaml and its shard_size)
    argv = list(hsdp.argv)
    at = argv.index("--trainer.strategy.init_args.shard_size")
    del argv[at : at + 2]
    argv = [a.replace("strategies/hsdp.yaml", "strategies/ddp.yaml") for a in argv]
    replicated, _ = run(type(hsdp)(tuple(argv), " ".join(argv)), tmp_path / "ddp")

    assert sorted(sharded) == sorted(replicated) == [0, 1] and len(sharded[0]) > 5
    assert replicated[1]["val/loss_fm"] != replicated[0]["val/loss_fm"]  # training moved the adapters
    for step, figures in replicated.items():
        for key, value in figures.items():
            assert sharded[step][key] == pytest.approx(value, rel=1e-4), (step, key)
    mine, theirs = adapters(tmp_path / "hsdp"), adapters(tmp_path / "ddp")
    assert mine.keys() == theirs.keys() and mine
    for key in mine:  # the tolerance of tests/test_fsdp2.py's FSDP2-vs-DDP comparison
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-4, atol=1e-6, msg=key)
    exported = sorted(p.name for p in (tmp_path / "ddp" / "lora" / "final").glob("*.safetensors"))
    assert "unseen.safetensors" in exported
    for name in exported:  # the per-domain LoRA files
        a, b = (load_file(tmp_path / run / "lora" / "final" / name) for run in ("hsdp", "ddp"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=f"{name} {key}")
