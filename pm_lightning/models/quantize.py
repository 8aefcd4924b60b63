"""Weight-only quantization of the frozen base transformer's Linear layers, through torchao's `quantize_`.

    int8  torchao Int8WeightOnlyConfig: int8 weights, one scale per output row; runs on CPU and GPU.
    fp8   torchao Float8WeightOnlyConfig: float8_e4m3 weights, one scale per output row (the matmul runs in the
          activations' precision, so it also runs on CPU; the fp8 memory saving is what a 24 GB card needs).
    nf4   torchao NF4Tensor (QLoRA's 4-bit NormalFloat, blocks of 64 with double-quantized scales): the
          format torchtune trains LoRA on top of; runs on CPU and GPU.

Only the frozen base is quantized, before the adapters are added: peft then wraps each quantized Linear as its
`base_layer`, and the adapters (plain / masked / asymmetric LoRA) stay fp32 parameters on top. Gradients reach the
adapters through the quantized layers' input gradients (each format's linear is differentiable in its input).
What this stores per Linear weight (bytes): bf16 2, int8 1, fp8 1, nf4 4.127 / 8; the memory plan counts the same
(`scaling/memory_formulas.py`). A Linear whose shape a format cannot hold (NF4 needs a multiple of 64 x 256
elements) stays unquantized and is reported.

Library choice (docs/SCALING.md, "Quantized base"): torchao covers the three formats with one `quantize_` call,
installs as a 3.4 MB wheel without pulling a CUDA build of torch, and runs on CPU, so every format is tested here;
diffusers' `TorchAoConfig` is the same `quantize_` applied at load time, but stage 2 must fuse its stage-1 LoRA into
the unquantized weights first, so the base is quantized after loading (and fusing) instead. bitsandbytes' NF4 is the
common alternative; it is not used (a CUDA binary wheel; its CPU 4-bit ops are newer and slower).
"""

from __future__ import annotations

import logging

import torch
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from pm_lightning.core.compat import CompatError, nf4_weight_only_config
from pm_lightning.core.extras import require

log = logging.getLogger(__name__)

QUANT_MODES = ("none", "int8", "fp8", "nf4")
NF4_BLOCK, NF4_SCALER_BLOCK = 64, 256


def check_mode(mode: str, key: str = "model.init_args.quantize") -> str:
    """`mode` when it is one of QUANT_MODES, else a ValueError naming `key` and the choices."""
    if mode not in QUANT_MODES:
        raise ValueError(f"{key} must be one of {list(QUANT_MODES)}, got {mode!r}")
    return mode


def torchao_config(mode: str):
    """The torchao `quantize_` config of `mode` (int8, fp8 or nf4)."""
    require("torchao", f"quantize: {mode} (a quantized frozen base)")
    if mode == "int8":
        # lazy: torchao is the optional extra `quant` (core/extras.py)
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig(version=2)
    if mode == "fp8":
        # lazy: torchao is the optional extra `quant` (core/extras.py)
        from torchao.quantization import Float8WeightOnlyConfig

        return Float8WeightOnlyConfig()
    if mode == "nf4":
        config = nf4_weight_only_config()  # class attributes: blocks of 64 values, scaler blocks of 256
        if (config.block_size, config.scaler_block_size) != (NF4_BLOCK, NF4_SCALER_BLOCK):
            raise CompatError(f"torchao's NF4 blocks changed to {config.block_size} / {config.scaler_block_size}")
        return config
    raise ValueError(f"no torchao config for quantize={mode!r}")


def holds(mode: str, linear: nn.Linear) -> bool:
    """Whether `mode` can store this Linear's weight (NF4: whole blocks of 64 and whole scaler blocks of 256)."""
    if mode == "nf4":
        n = linear.weight.numel()
        return n % NF4_BLOCK == 0 and (n // NF4_BLOCK) % NF4_SCALER_BLOCK == 0
    return True


def quantize_base(transformer: nn.Module, mode: str) -> list[str]:
    """Quantize every frozen Linear weight of `transformer` in place (before any adapter is added); the names of the
    quantized Linears. `mode="none"` does nothing."""
    check_mode(mode)
    if mode == "none":
        return []

    if any(isinstance(m, LoraLayer) for m in transformer.modules()):
        raise ValueError("quantize the base before adding adapters (the adapters stay unquantized fp32)")
    # lazy: torchao is the optional extra `quant` (core/extras.py)
    from torchao.quantization import quantize_

    linears = {n: m for n, m in transformer.named_modules() if isinstance(m, nn.Linear) and not m.weight.requires_grad}
    chosen = {n for n, m in linears.items() if holds(mode, m)}
    skipped = sorted(set(linears) - chosen)
    if skipped:
        log.warning("quantize=%s: %d Linear(s) stay unquantized (shape), e.g. %s", mode, len(skipped), skipped[0])
    # where the weights are (the CPU at load time: a 24 GB card never holds the bf16 base), whatever default device a
    # strategy set for configure_model (Lightning: the GPU), so torchao's new scales land beside their weights
    device = next(iter(linears.values())).weight.device if linears else torch.device("cpu")
    with torch.device(device):
        quantize_(transformer, torchao_config(mode), filter_fn=lambda m, name: name in chosen)
    for name in chosen:  # quantize_ swaps in new Parameters: keep the base frozen
        transformer.get_submodule(name).weight.requires_grad_(False)
    return sorted(chosen)


def is_quantized(weight: torch.Tensor) -> bool:
    """True for a torchao quantized tensor (Int8Tensor, Float8Tensor, NF4Tensor), also wrapped in a Parameter."""
    data = weight.data if isinstance(weight, nn.Parameter) else weight
    return type(data).__module__.startswith("torchao.")


def quantized_linears(transformer: nn.Module) -> list[str]:
    """Names of the Linear layers whose weight is a quantized tensor (peft's `base_layer`s included)."""
    return [n for n, m in transformer.named_modules() if isinstance(m, nn.Linear) and is_quantized(m.weight)]
