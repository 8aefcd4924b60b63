"""The end of a DDP run (issue 22): Lightning's `Strategy.teardown` moves the whole model to CPU memory
(`lightning_module.cpu()`), at FLUX.1-dev size every rank's 24 GB bf16 base, 190 GB per 8-GPU node. `FluxDDPStrategy`
(experiments/strategies/ddp.yaml) holds the frozen parameters and buffers out of that move; Lightning moves the rest
(the adapters). Covered: `frozen_state_held` itself, and fits through `fit` under ddp.yaml, whose teardowns (the
step-0 validation's, `--validate_first`, and the fit's) are watched by `TeardownProbe`.

On CPU `.cpu()` returns the tensor itself, so a CPU run cannot tell a moved tensor from a kept one: the probe makes
the teardown's `.cpu()` return a copy of each tensor it is applied to, as a move from a GPU to host memory does (a new
storage behind the same Parameter), and records which tensors got one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from lightning.pytorch import Callback
from torch import nn

from pm_lightning import fit
from pm_lightning.training.strategies import frozen_state_held
from tests.conftest import REPO
from tests.test_fit import small_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

DDP = REPO / "experiments" / "strategies" / "ddp.yaml"


def host_copy_on_cpu(module: nn.Module) -> None:
    """`module.cpu()` (what `Strategy.teardown` calls) gives every tensor it moves a new storage, as from a GPU."""

    def cpu():
        original = torch.Tensor.cpu
        with mock.patch.object(torch.Tensor, "cpu", lambda t, *a, **k: original(t, *a, **k).clone()):
            return type(module).cpu(module)

    module.cpu = cpu


def tensors(module: nn.Module) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The module's frozen and trainable parameters and its buffers, by name: the tensor object and a view of its
    storage now (a Parameter moved by `.cpu()` stays the same object with a new storage). The views keep the old
    storages alive, so no new one can take an old one's address: an adapter shared by several layers (q, k, v) is
    copied once per layer."""
    params = {n: (p, p.detach()) for n, p in module.named_parameters()}
    return {
        "frozen": {n: v for n, v in params.items() if not v[0].requires_grad},
        "trainable": {n: v for n, v in params.items() if v[0].requires_grad},
        "buffers": {n: (b, b.detach()) for n, b in module.named_buffers()},
    }


def storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class TeardownProbe(Callback):
    """Appends one record per strategy teardown to `<out>/rank<N>.json`: for each kind of tensor, how many there
    were before it, how many are the same tensor on the same storage after it ("kept") and how many are the same
    Parameter on a new storage ("moved"), and whether the module lists the same names in the same order."""

    def __init__(self, out: str):
        self.out, self.before, self.records = Path(out), None, []

    def setup(self, trainer, pl_module, stage) -> None:
        host_copy_on_cpu(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":  # the step-0 validation; a fit's own validations end no stage
            self.before = tensors(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.before = tensors(pl_module)

    def teardown(self, trainer, pl_module, stage) -> None:  # after the strategy's teardown
        del pl_module.cpu
        after = tensors(pl_module)
        record = {"stage": stage}
        for kind, before in self.before.items():
            now = after[kind]
            same = [n for n, (t, _) in before.items() if n in now and now[n][0] is t]
            record[kind] = {
                "count": len(before),
                "same_order": list(now) == list(before),
                "kept": sum(storage(now[n][0]) == storage(before[n][1]) for n in same),
                "moved": sum(storage(now[n][0]) != storage(before[n][1]) for n in same),
            }
            before.clear()
        self.records.append(record)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.records))


def probed_config(tmp_path: Path, tiny_base: str, tiny_shards: dict) -> Path:
    """One training step after a step-0 validation of one batch, with the probe."""
    path = small_config(tmp_path, tiny_base, tiny_shards, max_steps=1, every=100)
    cfg = yaml.safe_load(path.read_text())
    cfg["validate_first"] = True
    cfg["data"]["val_shards"] = tiny_shards["val"]
    cfg["trainer"]["limit_val_batches"] = 1
    cfg["trainer"]["callbacks"].append(
        {"class_path": "tests.test_teardown.TeardownProbe", "init_args": {"out": str(tmp_path / "probe")}}
    )
    path.write_text(yaml.safe_dump(cfg))
    return path


def assert_base_kept_and_adapters_moved(records: list[dict]) -> None:
    """Both teardowns, the step-0 validation's and the fit's: the frozen base's parameters (transformer, VAE, text
    encoder) and its buffer are the same tensors on the same storage after them; every trainable adapter is the same
    Parameter with its data moved, as Lightning does; the module lists them all in their order."""
    assert [r["stage"] for r in records] == ["validate", "fit"]
    for r in records:
        frozen, trainable, buffers = r["frozen"], r["trainable"], r["buffers"]
        assert frozen["count"] > trainable["count"] > 0 and buffers["count"] > 0, r
        assert frozen["kept"] == frozen["count"] and buffers["kept"] == buffers["count"], r
        assert trainable["moved"] == trainable["count"], r
        assert frozen["same_order"] and trainable["same_order"] and buffers["same_order"], r


def test_frozen_state_held_keeps_frozen_tensors_out_of_a_conversion_and_puts_them_back_in_order():
    """A conversion observable on CPU (`.double()`): inside, the frozen parameters and the buffer of a module without
    trainable parameters stay float32, the same tensors; the trainable parameter and the buffer of its module are
    converted. Checked red with a context that holds nothing: the buffer is replaced and every tensor is float64."""
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    model[2].weight.requires_grad_(False)  # a module with a frozen weight and a trainable bias
    model[2].register_buffer("mask", torch.ones(1))
    names = [n for n, _ in model.named_parameters()], [n for n, _ in model.named_buffers()]
    kept = [model[0].weight, model[0].bias, model[1].weight, model[1].running_mean, model[2].weight]
    with frozen_state_held(model) as held:
        model.double()
    assert held == len(model[0]._parameters) + len(model[1]._parameters) + len(model[1]._buffers) + 1
    assert [n for n, _ in model.named_parameters()] == names[0] and [n for n, _ in model.named_buffers()] == names[1]
    assert model[0].weight is kept[0] and model[1].running_mean is kept[3] and model[2].weight is kept[4]
    assert all(t.dtype == torch.float32 for t in kept)
    assert model[2].bias.dtype == model[2].mask.dtype == torch.float64  # trainable, and its module's buffer


def test_frozen_state_held_accepts_no_module():
    """`Strategy.teardown` may run before a module is attached (an early failure)."""
    with frozen_state_held(None) as held:
        assert held == 0


def test_ddp_teardowns_leave_the_frozen_base_in_place(tmp_path, tiny_base, tiny_shards):
    """`fit --config experiments/strategies/ddp.yaml` on 1 CPU process (gloo), `--validate_first`: neither teardown
    gives the base a host copy. Checked red with `FluxDDPStrategy.teardown` calling Lightning's without
    `frozen_state_held`: all 357 frozen parameters moved and the buffer replaced by a copy, in both teardowns."""
    import torch.distributed as dist

    env = dict(os.environ)
    try:
        assert fit.main(["--config", str(probed_config(tmp_path, tiny_base, tiny_shards)), "--config", str(DDP)]) == 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(env)
    assert_base_kept_and_adapters_moved(json.loads((tmp_path / "probe" / "rank0.json").read_text()))


@pytest.mark.slow
def test_two_process_ddp_teardowns_leave_every_ranks_frozen_base_in_place(tmp_path, tiny_base, tiny_shards):
    """The same on 2 gloo processes (Lightning's DDP launch, DistributedDataParallel wrapped and unwrapped): every
    rank keeps its base. Checked red as the 1-process test: every rank's frozen parameters moved."""
    cmd = [sys.executable, "-m", "pm_lightning.fit", "--config", str(probed_config(tmp_path, tiny_base, tiny_shards))]
    cmd += ["--config", str(DDP), "--trainer.devices", "2"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert_base_kept_and_adapters_moved(json.loads((tmp_path / "probe" / f"rank{rank}.json").read_text()))
