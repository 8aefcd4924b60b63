"""FSDP2 (experiments/strategies/fsdp.yaml) for real: 2 gloo processes on CPU train, checkpoint, resume exactly,
export LoRA files stock diffusers loads and render sample grids; the adapters agree with the same run under DDP.
One process (world size 1) trains, checkpoints, resumes and exports too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.fsdp2_optim_checks import LR, PER_TENSOR, SHAPES, STEPS, full_grads, full_params
from tests.helpers import assert_clean_exit
from tests.test_fit import small_config, with_outputs

pytestmark = pytest.mark.slow
FSDP = str(REPO / "experiments" / "strategies" / "fsdp.yaml")


def fit_2proc(cfg: Path, *args: str, dump: Path | None = None, devices: int = 2) -> subprocess.CompletedProcess:
    """`python -m pm_lightning.fit --config cfg ... --trainer.devices 2` in a subprocess (stdin closed: W&B).

    Python's fault handler is on, so a rank that dies of a signal prints every thread's Python stack; the whole
    stderr of each call is kept beside the config (`helpers.assert_clean_exit`).
    """
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PM_DUMP_DIR=str(dump or cfg.parent / "dump"))
    env["PYTHONFAULTHANDLER"] = "1"
    cmd = [sys.executable, "-m", "pm_lightning.fit", "--config", str(cfg), "--trainer.devices", str(devices), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    assert_clean_exit(proc, cfg.parent)
    return proc


def adapters(run: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)["state_dict"]


def config(tmp_path: Path, tiny_base: str, shards: dict, max_steps: int, **trainer) -> Path:
    """The test_fit small run (masked rank 4 + alignment, CAME) with LoRA export and sample grids every 2 steps;
    a small clip value so clipping by the global norm changes every step."""
    cfg = small_config(tmp_path, tiny_base, shards, max_steps=max_steps, every=2)
    return with_outputs(cfg, every=2, gradient_clip_val=0.05, **trainer)


def test_fsdp2_trains_resumes_exactly_exports_and_agrees_with_ddp(tmp_path, tiny_base, tiny_shards):
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    straight = config(tmp_path / "fsdp", tiny_base, tiny_shards, max_steps=4)
    proc = fit_2proc(straight, "--config", FSDP, "--trainer.callbacks+=tests.ddp_probe.ShardProbe")
    run = tmp_path / "fsdp" / "run"
    assert proc.stdout.count("run directory:") == 1  # the end-of-run report is printed once, not once per rank

    # sharded for real: every transformer parameter a DTensor, one unit per Flux block, gradients for adapters only
    probe = torch.load(tmp_path / "fsdp" / "dump" / "shard-rank0.pt")
    assert probe["dtensor"] and probe["units"] == 6  # tiny Flux: 2 double + 4 single blocks
    assert probe["frozen_with_grad"] == 0 and probe["trainable_with_grad"] > 0

    # checkpoints hold the whole adapters (gathered), nothing of the frozen base
    final = adapters(run)
    assert final and all("lora" in k for k in final)
    assert not any(type(v).__name__ == "DTensor" for v in final.values())

    # exact resume: 2 steps, then --ckpt_path last to 4, equals the straight 4-step run bit for bit
    resumed_cfg = config(tmp_path / "resumed", tiny_base, tiny_shards, max_steps=2)
    fit_2proc(resumed_cfg, "--config", FSDP)
    fit_2proc(resumed_cfg, "--config", FSDP, "--trainer.max_steps", "4", "--ckpt_path", "last")
    resumed = adapters(tmp_path / "resumed" / "run")
    assert resumed.keys() == final.keys()
    for key in final:
        assert torch.equal(final[key], resumed[key]), key

    # the same run under DDP: the same adapters to floating-point tolerance (clipping by the global norm included)
    ddp_cfg = config(tmp_path / "ddp", tiny_base, tiny_shards, max_steps=4)
    fit_2proc(ddp_cfg, "--trainer.strategy", "ddp")
    ddp = adapters(tmp_path / "ddp" / "run")
    assert ddp.keys() == final.keys()
    moved = 0
    for key in final:
        torch.testing.assert_close(final[key], ddp[key], rtol=1e-4, atol=1e-6, msg=key)
        moved += int(not torch.equal(final[key], adapters(run, "epoch=0-step=2.ckpt")[key]))
    assert moved > 0  # training changed the adapters between the checkpoints

    # exported per-domain files: equal to DDP's, every key loads in stock FluxPipeline
    for name in ("lego", "unseen"):
        mine, theirs = (
            load_file(run / "lora" / "final" / f"{name}.safetensors"),
            load_file(tmp_path / "ddp" / "run" / "lora" / "final" / f"{name}.safetensors"),
        )
        assert mine.keys() == theirs.keys()
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-4, atol=1e-6)
    pipe = FluxPipeline.from_pretrained(tiny_base)
    pipe.load_lora_weights(str(run / "lora" / "final" / "lego.safetensors"))
    adapted = [m for m in pipe.transformer.modules() if hasattr(m, "lora_A") and m.lora_A]
    assert len(load_file(run / "lora" / "final" / "lego.safetensors")) == 2 * len(adapted) > 0

    # sample grids rendered with every rank taking part, written once
    assert (run / "samples" / "step-000002.png").is_file() and (run / "samples" / "final.png").is_file()
    assert (run / "lora" / "step-000002" / "lego.safetensors").is_file()


def test_fsdp2_on_one_process_trains_checkpoints_resumes_and_exports(tmp_path, tiny_base, tiny_shards):
    """FSDP2 at world size 1 (`--trainer.devices 1` with fsdp.yaml, a common first try): the parameters are DTensors
    on a 1-rank mesh, so the LoRA export and the sample grids gather them like at any world size. Checked red: with
    the export's former `trainer.world_size > 1` condition the run dies at the first export with `aten.cat got
    mixed torch.Tensor and DTensor`."""
    from safetensors.torch import load_file

    straight = config(tmp_path / "straight", tiny_base, tiny_shards, max_steps=4)
    fit_2proc(straight, "--config", FSDP, "--trainer.callbacks+=tests.ddp_probe.ShardProbe", devices=1)
    assert torch.load(tmp_path / "straight" / "dump" / "shard-rank0.pt")["dtensor"]  # sharded for real, 1 rank
    run = tmp_path / "straight" / "run"
    final = adapters(run)
    assert final and all("lora" in k for k in final)
    assert any(not torch.equal(final[k], adapters(run, "epoch=0-step=2.ckpt")[k]) for k in final)  # it trained

    resumed_cfg = config(tmp_path / "resumed", tiny_base, tiny_shards, max_steps=2)
    fit_2proc(resumed_cfg, "--config", FSDP, devices=1)
    fit_2proc(resumed_cfg, "--config", FSDP, "--trainer.max_steps", "4", "--ckpt_path", "last", devices=1)
    resumed = adapters(tmp_path / "resumed" / "run")
    assert resumed.keys() == final.keys() and all(torch.equal(final[k], resumed[k]) for k in final)

    for tag in ("step-000002", "final"):  # exported at the checkpoint and at the end: plain tensors, finite
        lego = load_file(run / "lora" / tag / "lego.safetensors")
        assert lego and all(torch.isfinite(v).all() for v in lego.values())
    assert (run / "samples" / "final.png").is_file()


def test_fsdp2_keeps_a_bf16_base_next_to_fp32_adapters(tmp_path, tiny_base, tiny_shards):
    """FSDP2 shards per parameter: a bf16 frozen base and fp32 trainable adapters share each block's unit (with
    gradient checkpointing recomputing the sharded blocks)."""
    cfg = small_config(tmp_path, tiny_base, tiny_shards, max_steps=1, every=1)
    data = yaml.safe_load(cfg.read_text())
    data["trainer"]["gradient_clip_val"] = 1.0
    cfg.write_text(yaml.safe_dump(data))
    fit_2proc(
        cfg,
        "--config",
        FSDP,
        "--model.init_args.dtype",
        "bfloat16",
        "--model.init_args.gradient_checkpointing",
        "true",
        "--trainer.callbacks+=tests.ddp_probe.ShardProbe",
    )
    probe = torch.load(tmp_path / "dump" / "shard-rank1.pt")
    assert probe["dtensor"] and probe["frozen_dtypes"] == ["torch.bfloat16"]
    assert probe["trainable_dtypes"] == ["torch.float32"] and probe["frozen_with_grad"] == 0
    final = adapters(tmp_path / "run")
    assert final and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in final.values())


def run_worker(module: str, *args: str, timeout: int = 300) -> None:
    """`python -m module *args` (a worker spawning its gloo ranks) in a subprocess; it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> dict:
    """tests/fsdp2_worker.py's results: one run of 2 gloo processes, shared by the tests below."""
    out = tmp_path_factory.mktemp("fsdp2-toy") / "sharded.pt"
    run_worker("tests.fsdp2_worker", "29731", str(out))
    return torch.load(out)


def test_clipping_and_came_on_dtensor_shards_equal_the_unsharded_step(toy_run):
    """Lightning's clip by norm over FSDP2's DTensor gradients uses the global norm, and CAME's factored statistics
    over sharded rows equal the unsharded optimizer: two clipped CAME steps on 2 gloo ranks = one process."""
    from came_pytorch import CAME

    from tests.fsdp2_worker import step, toy

    sharded = toy_run
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    for name in ("came", "sgd"):
        model = toy()
        model[0].bias.requires_grad_(False)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = CAME(trainable, lr=1e-2) if name == "came" else torch.optim.SGD(trainable, lr=1.0)
        for _ in range(2):
            step(model, optimizer, x, clip=0.01)
            optimizer.zero_grad()
        for key, value in model.state_dict().items():
            torch.testing.assert_close(sharded[name][key], value, rtol=1e-5, atol=1e-6, msg=f"{name} {key}")
        assert torch.equal(sharded[name]["0.bias"], start["0.bias"])  # frozen: untouched
        moved = (sharded[name]["1.weight"] - start["1.weight"]).norm()
        assert moved > 0 and (name == "came" or moved < 0.021)  # SGD: 2 steps of a gradient clipped to norm 0.01


def test_gradient_accumulation_draws_noise_per_micro_batch_and_resumes_exactly(tmp_path, tiny_base, tiny_shards):
    """2 micro-batches per step, sharded on 2 ranks: each micro-batch draws its own noise and t; a run stopped at
    step 2 and resumed to 4 ends with the adapters of the run that never stopped."""
    accumulate = ["--config", FSDP, "--trainer.accumulate_grad_batches", "2"]
    probe = "--trainer.callbacks+=tests.ddp_probe.NoiseProbe"
    straight = small_config(tmp_path / "straight", tiny_base, tiny_shards, max_steps=4, every=2)
    fit_2proc(straight, *accumulate, probe)
    rows = torch.load(tmp_path / "straight" / "dump" / "noise-rank0.pt")
    assert [r[0] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3]  # 2 micro-batches per optimizer step
    keys = [r[2] for r in rows]
    assert len(set(keys)) == len(keys)  # a key (noise, t) of its own per micro-batch
    assert all(rows[i][3] != rows[i + 1][3] for i in range(0, len(rows), 2))  # distinct t within each step

    resumed = small_config(tmp_path / "resumed", tiny_base, tiny_shards, max_steps=2, every=2)
    fit_2proc(resumed, *accumulate)
    fit_2proc(resumed, *accumulate, probe, "--trainer.max_steps", "4", "--ckpt_path", "last")
    after = torch.load(tmp_path / "resumed" / "dump" / "noise-rank0.pt")
    assert after == rows[4:]  # the resumed micro-batches draw exactly the noise of the uninterrupted run
    final, again = adapters(tmp_path / "straight" / "run"), adapters(tmp_path / "resumed" / "run")
    assert final.keys() == again.keys()
    for key in final:
        assert torch.equal(final[key], again[key]), key


CAME_RTOL, CAME_ATOL = 1e-5, 1e-6  # fp32: sums over shards and stacks add in another order than per whole tensor


def came_pytorch_steps() -> list[torch.Tensor]:
    """STEPS steps of came-pytorch on the whole tensors in one process."""
    from came_pytorch import CAME

    params = [torch.nn.Parameter(t) for t in full_params()]
    opt = CAME(params, lr=LR)
    for step in range(STEPS):
        for p, grad in zip(params, full_grads(step)):
            p.grad = grad
        opt.step()
    return [p.detach() for p in params]


def test_grouped_came_on_shards_equals_per_tensor_and_single_process_came(toy_run):
    """CAME under FSDP2 on the local shards, grouped by shape (training/came_sharded.py), on 2 gloo processes: equal to
    the per-tensor `ShardedCAME` and to came-pytorch on the whole tensors, with 3 collectives per step instead of about
    5 per tensor; a per-tensor state loads into it, and its own state round-trips through torch.distributed.checkpoint
    (gathered whole, loaded back into fresh shards) to the uninterrupted steps; AdamW's foreach kernels on DTensors equal its per-tensor loop.

    Checked red once: with `_reduce`'s all_reduce removed (each rank summing its own shard only), the first tensor,
    (8, 5), differs from came-pytorch's beyond the tolerance. Shares the toy run of the test above (one 2-process
    worker); the checks add about 3 s of CPU time to it.
    """
    r = toy_run["optimizers"]
    assert r["types"] == {"grouped": "ShardedGroupedCAME", "reference": "ShardedCAME", "3-D": "ShardedCAME"}
    whole, start = came_pytorch_steps(), full_params()
    assert len(r["grouped"]) == len(SHAPES)
    for i, (mine, theirs) in enumerate(zip(r["grouped"], whole)):
        torch.testing.assert_close(mine, theirs, rtol=CAME_RTOL, atol=CAME_ATOL, msg=f"{SHAPES[i]}")
        assert (mine - start[i]).abs().max() > 1e-3  # every tensor moved (rank 1's empty shard of (1, 9) too)
    for mine, again in zip(r["grouped"], r["checkpointed"]):  # 2 steps, gathered and loaded back by DCP, 2 more
        torch.testing.assert_close(again, mine, rtol=CAME_RTOL, atol=CAME_ATOL)
    for name in ("reference", "resumed"):  # per tensor throughout; per tensor for 2 steps, then grouped
        for i, theirs in zip(PER_TENSOR, r[name]):
            torch.testing.assert_close(
                r["grouped"][i], theirs, rtol=CAME_RTOL, atol=CAME_ATOL, msg=f"{name} {SHAPES[i]}"
            )
    for key, value in r["grouped state"].items():  # the same state: checkpoints hold either implementation's
        torch.testing.assert_close(value, r["reference state"][key], rtol=CAME_RTOL, atol=CAME_ATOL, msg=key)
    assert r["collectives"]["grouped"] == 3  # one all_reduce per point of the step, whatever the tensor count
    assert r["collectives"]["reference"] >= 4 * len(PER_TENSOR)
    assert r["adamw grouped foreach"] is True and r["adamw reference foreach"] is False
    for mine, theirs in zip(r["adamw grouped"], r["adamw reference"]):
        torch.testing.assert_close(mine, theirs, rtol=CAME_RTOL, atol=CAME_ATOL)
