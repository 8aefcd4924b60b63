"""Host memory at scale (issue 22): the base's memory-mapped weights are never written, so every rank reads the same
clean page-cache pages and none holds a private copy. Stage 2's stage-1 LoRA is a frozen, unmerged peft adapter (the
same model as the LoRA fused into the base: the loss and the new LoRA's gradients of the first step), and DDP's
start-up broadcast leaves the loaded weights alone. The figures at scale: bench/host_memory.py, docs/SCALING.md."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_routing import set_domains
from pm_lightning.models.adapter_state import adapter_state_dict, load_adapter_state_dict
from pm_lightning.models.adapters import FROZEN_ADAPTER, adapter_parameters, add_adapters
from pm_lightning.models.lora_files import fuse_lora_file
from pm_lightning.training.stage1 import Stage1Module
from pm_lightning.training.stage2 import Stage2Module
from tests.test_stage2 import CELL, batch, stage1_file  # noqa: F401 - module fixtures
from tests.test_stage2 import make_module as frozen_module


class FusedStage2(Stage2Module):
    """Stage 2 as it was before issue 22: the stage-1 LoRA fused into the base on the CPU (diffusers' fuse)."""

    def prepare_base(self, backbone) -> None:
        fuse_lora_file(backbone, self.stage1)

    def add_stage_adapters(self, transformer) -> None:
        add_adapters(transformer, self.adapter_cfg)
        set_domains(transformer, None)


def base_file(tiny_base) -> str:
    return str((Path(tiny_base) / "transformer" / "diffusion_pytorch_model.safetensors").resolve())


def dirty_bytes(path: str) -> int:
    """Private_Dirty bytes of this process's mappings of `path`: pages of the file copied because they were written."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            inside = len(head) >= 6 and head[5] == path
        elif inside and head[0] == "Private_Dirty:":
            total += int(head[1]) * 1024
    return total


def first_step(module, batch):  # noqa: F811 - the fixture's name
    """The first training step's loss and the new LoRA's gradients."""
    module.zero_grad(set_to_none=True)
    loss = module.losses(batch, step=0)["fm"].mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in adapter_parameters(module.transformer)]


def test_frozen_stage1_adapter_trains_as_the_fused_base_and_never_writes_the_base(tiny_base, stage1_file, batch):  # noqa: F811
    """Equal within fp32 rounding: (W + BA) x and W x + B (A x) differ in summation order only. The base file's pages
    stay clean: checked to go red by building the fused model (the old path), which copies them."""
    before = dirty_bytes(base_file(tiny_base))
    frozen = frozen_module(tiny_base, stage1_file)
    assert dirty_bytes(base_file(tiny_base)) <= before  # nothing of the mmap'd base was written
    on_disk = load_file(base_file(tiny_base))
    base = {k.replace(".base_layer", ""): v for k, v in frozen.transformer.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], v) for k, v in on_disk.items())  # the weights are the file's, unfused
    layer = frozen.transformer.transformer_blocks[0].attn.to_q
    assert layer.active_adapters == [FROZEN_ADAPTER, "default"]
    assert not any(p.requires_grad for p in layer.lora_A[FROZEN_ADAPTER].parameters())

    torch.manual_seed(1)
    with torch.no_grad():  # move the new B off zero: the new LoRA contributes
        for p in adapter_parameters(frozen.transformer):
            p.add_(torch.randn_like(p) * 0.02)
    fused = FusedStage2(
        base=tiny_base,
        domains=frozen.domains,
        stage1=stage1_file,
        adapter=frozen.adapter_cfg,
        mode="dual",
        cell=CELL,
        optimizer=frozen.optim_cfg,
    )
    fused.configure_model()
    assert dirty_bytes(base_file(tiny_base)) > before  # the fused base: a private copy of the file's pages
    load_adapter_state_dict(fused.transformer, adapter_state_dict(frozen.transformer))

    loss, grads = first_step(frozen, batch)
    fused_loss, fused_grads = first_step(fused, batch)
    assert torch.allclose(loss, fused_loss, rtol=1e-5, atol=1e-7), (loss, fused_loss)
    assert len(grads) == len(fused_grads) > 0
    assert all(torch.allclose(g, f, rtol=1e-4, atol=1e-7) for g, f in zip(grads, fused_grads))


def test_ddp_start_up_leaves_the_memory_mapped_base_clean(tiny_base, stage1_file):  # noqa: F811
    """DDP's start-up broadcast writes every tensor it syncs back in place, on every rank (the root too, at any world
    size), which copies a memory-mapped base into each rank's private memory; the modules leave the weights loaded
    from the files out of it (every rank reads the same files). Checked to go red without the fix: with
    `_ddp_params_and_buffers_to_ignore` emptied the file's pages are dirtied (9.4 MB, the whole tiny base)."""
    stage1 = Stage1Module(base=tiny_base, domains=["a", "b"], adapter=AdapterConfig(kind="masked", rank=4))
    stage1.configure_model()
    stage2 = frozen_module(tiny_base, stage1_file)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for module in (stage1, stage2):
            before = dirty_bytes(base_file(tiny_base))
            torch.nn.parallel.DistributedDataParallel(module)  # what Lightning's DDPStrategy._setup_model does
            assert dirty_bytes(base_file(tiny_base)) <= before
            ignored = set(module._ddp_params_and_buffers_to_ignore)  # the frozen weights only: adapters still synced
            assert ignored and not any(module.get_parameter(n).requires_grad for n in ignored)
    finally:
        dist.destroy_process_group()
