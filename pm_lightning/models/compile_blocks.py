"""Regional compilation of the Flux transformer: each double- and single-stream block's `forward` compiled once.

The blocks to compile are diffusers' own data (`FluxTransformer2DModel._repeated_blocks`, the classes its
`compile_repeated_blocks` compiles). All blocks of a class share one code object, so torch.compile traces each class
once and every block of it reuses the graph (no per-block specialisation: nn.Module attributes and parameters are graph
inputs), as in diffusers' regional compilation and torchtitan's per-block `apply_compile`.

Only `forward` is compiled, not the module call (`nn.Module.compile`, which diffusers uses, compiles `_call_impl` with
its hooks): the alignment hooks (`models/alignment.py`, added and removed every step, one of them ends the teacher pass
by raising) and FSDP2's per-block unshard / reshard hooks then run eagerly around the compiled forward, and gradient
checkpointing (diffusers calls `block(...)` inside `torch.utils.checkpoint`) recomputes through the compiled forward.
LoRA routing is module state (`layer.domains`, a tensor read inside the forward): a graph input, so a new batch's
domains need no recompilation. State-dict keys are unchanged (no `_orig_mod.` wrapper).
"""

from __future__ import annotations

import torch
from torch import nn

COMPILE_OPTIONS: dict = {}
"""torch.compile's options for the blocks (default: inductor with its defaults); tests switch the backend here."""


def repeated_blocks(transformer: nn.Module) -> list[nn.Module]:
    """The transformer's repeated blocks (diffusers' `_repeated_blocks` class names), in module order."""
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    if not names:
        raise ValueError(f"{type(transformer).__name__} names no _repeated_blocks: nothing to compile per block")
    return [m for m in transformer.modules() if type(m).__name__ in names]


def compile_blocks(transformer: nn.Module) -> int:
    """Compile every repeated block's forward in place (with `COMPILE_OPTIONS`); returns how many. Idempotent: a
    block compiled already is left as it is."""
    blocks = repeated_blocks(transformer)
    for block in blocks:
        if not getattr(block, "pm_compiled", False):
            block.forward = torch.compile(block.forward, **COMPILE_OPTIONS)  # an instance attribute over the class's
            block.pm_compiled = True
    return len(blocks)
