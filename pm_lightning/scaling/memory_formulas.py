"""Analytic per-GPU memory of a stage-1 training step under DDP and FSDP2 (no GPU needed).

Command: `python -m pm_lightning.memory_plan`. The model's shape: `scaling/model_shapes.py`; the plan over strategies,
quantizations and the text cache: `scaling/plan_search.py`; its tables: `scaling/plan_report.py`.

Parameter counts and shapes come from the real model built on the ``meta`` device with the real
``add_adapters`` (so they agree with ``pm_lightning.params``); everything else is a formula of those
shapes, the token count and the strategy. Formulas and assumptions: docs/SCALING.md, "Memory plan".

Per-GPU components (bytes; p = frozen base parameters, a = adapter parameters, n = GPUs, B = batch,
T = image + text tokens, N = image tokens, D = hidden width, K = blocks, L = alignment layers):

* frozen base       p x 2 (bf16). FSDP2 shards each parameter in its own dtype: p x 2 / n.
* adapter weights   a x 4 (fp32), / n when sharded.
* bf16 compute copy DDP: the autocast cache of the fp32 adapters, a x 2. FSDP: inside the gathered units.
* adapter grads     a x 4 (fp32), / n when sharded.
* optimizer state   fp32: CAME = m (full size) + the factored row/column statistics of the squared
                    gradient and of the instability (exact, from the shapes, see `came_state_elements`);
                    AdamW = 2 full states. / n for every strategy except DDP.
* gathered params   FSDP2 (reshard_after_forward: true): the full bf16 parameters of the two largest units
                    (current + prefetched) and the root unit. reshard_after_forward: false: every unit stays
                    gathered from forward to backward: (p + a) x 2.
* comm buffers      DDP: its gradient buckets, one more copy of the grads (a x 4). FSDP: one unit's
                    unsharded bf16 adapter grads.
* activations       block checkpoints K x B x T x D x 2 (the input of every block, bf16) plus one block
                    recomputed in backward: (SAVED_PER_BLOCK + GRAD_PER_BLOCK) x B x T x D x 2.
                    Without checkpointing: K x SAVED_PER_BLOCK x B x T x D x 2 + GRAD_PER_BLOCK x B x T x D x 2.
* alignment         L x B x N x D x 2 x ALIGN_PER_LAYER (teacher features in bf16 + the fp32 tensors that
                    the distance saves for backward).
* text encoders     T5-XXL + CLIP-L weights in bf16 on every GPU, unless the text cache keeps them off
                    (`text_cache_only: true`, filled by `python -m pm_lightning.text_cache`): 0.
* VAE               its weights in bf16 (the encode itself runs under no_grad before the transformer and is
                    freed before the step's peak); 0 with the latent cache (`latent_cache_dir`, filled by
                    `python -m pm_lightning.latent_cache`: the VAE stays in CPU memory during training steps).
* alignment teacher the same transformer with the adapters off, under no_grad: no weights of its own; its
                    features are the "alignment features" row, its working set is freed block by block.
* quantized base    `model.init_args.quantize` (torchao weight-only, `models/quantize.py`): int8 and fp8 1 byte per
                    Linear weight of the base (+ one scale per row, negligible), NF4 4.127 bits (blocks of 64 with
                    double-quantized scales); everything else (norms, embeddings, biases) stays bf16. Single GPU or
                    DDP only: FSDP2 cannot shard the quantized tensors, so those rows are n/a.
* CUDA context      a constant (context, kernels, allocator slack): outside max_memory_allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pm_lightning.scaling.model_shapes import ModelShape

GiB = 2**30
BF16, FP32 = torch.bfloat16.itemsize, torch.float32.itemsize

SAVED_PER_BLOCK = 30
"""Tensors one Flux block saves for backward, in units of B x T x D bf16 elements. Measured with
saved-tensor hooks under bf16 autocast (masked LoRA, parameters excluded): 28.7 for a double-stream
block, 26.1 for a single-stream block (flash-style attention: no T x T matrix); rounded up."""
GRAD_PER_BLOCK = 10
"""Gradients in flight while one block runs backward (MLP hidden and its GELU grad, 4 + 4, plus the
residual stream, 2), same unit. An assumption, to be calibrated against a GPU run (bench/flux_step.py)."""
ALIGN_PER_LAYER = 7
"""Per hooked layer, units of B x N x D bf16: the teacher feature (1) + three fp32 N x D tensors the
distance saves for backward (normalize input, u_T - u_S, h_T - h_S: 3 x 2)."""
CUDA_CONTEXT_GIB = 1.5
"""CUDA context, cuBLAS/flash workspaces and allocator fragmentation (not in max_memory_allocated)."""
QUANT_BYTES = {"none": 2.0, "int8": 1.0, "fp8": 1.0, "nf4": 4.127 / 8}
"""Bytes per quantizable (Linear weight) parameter of the frozen base (`model.init_args.quantize`): bf16, torchao int8
and fp8 weight-only (per-row scales, negligible), torchao NF4 (4 bits + 0.127 bits of double-quantized block scales).
Order = preference when several fit: int8 before fp8 (same bytes; int8 per-row was 5x closer to the bf16 output on
the tiny base, tests/test_quantize.py, and needs no fp8 hardware)."""
QUANT_STRATEGIES = ("ddp",)
"""Strategies a quantized base trains under (one GPU is the DDP column with --gpus 1)."""
MEASURED_ON_GPU = False
"""Whether the quantized rows have been measured on a GPU (bench/gpu_check.py --quant); not yet."""


# ---------------------------------------------------------------------------------------------- optimizer


def came_state_elements(shape: tuple[int, ...]) -> int:
    """Elements of came-pytorch's CAME state for one parameter, exactly as it allocates them.

    exp_avg (full size) + RMS (a 0-d tensor); a parameter of >= 2 dims is factored: row statistics of
    shape[:-1] and column statistics of shape[:-2] + shape[-1:], for the squared gradient and for the
    instability (4 vectors); a 1-D parameter keeps one full exp_avg_sq instead.
    """
    numel = math.prod(shape)
    if len(shape) >= 2:
        rows, cols = math.prod(shape[:-1]), math.prod(shape[:-2]) * shape[-1]
        return numel + 2 * (rows + cols) + 1
    return 2 * numel + 1


def adamw_state_elements(shape: tuple[int, ...]) -> int:
    """torch AdamW: exp_avg and exp_avg_sq (full size) + the 0-d step tensor."""
    return 2 * math.prod(shape) + 1


OPTIMIZER_STATE = {"came": came_state_elements, "adamw": adamw_state_elements}


def optimizer_state_elements(shapes, optimizer: str = "came") -> int:
    """Total optimizer-state elements (fp32) over the trainable parameter `shapes`."""
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATE)}, got {optimizer!r}")
    return sum(OPTIMIZER_STATE[optimizer](tuple(s)) for s in shapes)


# ---------------------------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """One stage-1 step: tokens per sample, batch, alignment and checkpointing."""

    tokens: int = 4608
    """Image + text tokens per sample (1024 px grid = 64 x 64 = 4096 image tokens + 512 text tokens)."""
    text_tokens: int = 512
    batch: int = 1
    align_layers: int = 5
    """Hooked layers of the representation alignment (0 = alignment off)."""
    checkpointing: bool = True
    optimizer: str = "came"
    text_encoders: bool = False
    """T5 + CLIP on the GPU (no text cache)."""
    quant: str = "none"
    """Frozen base storage: "none" (bf16), "int8" / "fp8" / "nf4" (torchao weight-only, `model.init_args.quantize`)."""
    vae: bool = True
    """The VAE on the GPU (False with the latent cache, `model.init_args.latent_cache_dir`)."""

    def __post_init__(self):
        if self.quant not in QUANT_BYTES:
            raise ValueError(f"Workload.quant must be one of {sorted(QUANT_BYTES)}, got {self.quant!r}")
        if not 0 <= self.text_tokens < self.tokens:
            raise ValueError(f"Workload.text_tokens must be in [0, tokens), got {self.text_tokens} of {self.tokens}")
        if self.batch < 1:
            raise ValueError(f"Workload.batch must be >= 1, got {self.batch}")
        if self.optimizer not in OPTIMIZER_STATE:
            raise ValueError(f"Workload.optimizer must be one of {sorted(OPTIMIZER_STATE)}, got {self.optimizer!r}")

    @property
    def image_tokens(self) -> int:
        return self.tokens - self.text_tokens


def activation_bytes(shape: ModelShape, work: Workload) -> dict[str, int]:
    """Activation memory per GPU (batch per GPU = work.batch): checkpoints, one block's backward, alignment."""
    unit = work.batch * work.tokens * shape.hidden * BF16  # one B x T x D bf16 tensor
    if work.checkpointing:
        ckpt, block = shape.num_blocks * unit, (SAVED_PER_BLOCK + GRAD_PER_BLOCK) * unit
    else:
        ckpt, block = shape.num_blocks * SAVED_PER_BLOCK * unit, GRAD_PER_BLOCK * unit
    align = work.align_layers * work.batch * work.image_tokens * shape.hidden * BF16 * ALIGN_PER_LAYER
    return {
        "activations: block checkpoints": ckpt,
        "activations: one block backward": block,
        "alignment features": align,
    }


# ---------------------------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Strategy:
    """What a strategy shards (divides by the GPU count) and what it gathers."""

    name: str
    config: str
    engine: str
    """"ddp" or "fsdp": who owns the dtypes of the stored parameters."""
    shard_params: bool
    """Frozen base and adapter weights sharded (FSDP2)."""
    shard_states: bool
    """Gradients and optimizer state sharded (FSDP2)."""
    gather: str
    """"none", "units" (two units gathered at a time) or "all" (every unit gathered forward to backward)."""


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("ddp", "experiments/strategies/ddp.yaml", "ddp", False, False, "none"),
        Strategy("fsdp_full_shard", "experiments/strategies/fsdp.yaml", "fsdp", True, True, "units"),
        Strategy(
            "fsdp_shard_grad_op",
            "experiments/strategies/fsdp.yaml (reshard_after_forward: false)",
            "fsdp",
            True,
            True,
            "all",
        ),
    )
}


def components(shape: ModelShape, work: Workload, strategy: Strategy, gpus: int) -> dict[str, int]:
    """Bytes per GPU of every component of one training step under `strategy` on `gpus` GPUs."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    p, a, n = shape.base_params, shape.adapter_params, gpus

    def sharded(x: float, flag: bool) -> int:
        return math.ceil(x / n) if flag else int(x)

    state = optimizer_state_elements(shape.adapter_shapes, work.optimizer)
    base = p * BF16 + shape.linear_params * (QUANT_BYTES[work.quant] - BF16)
    out = {
        "frozen base": sharded(base, strategy.shard_params),
        "adapter weights (fp32)": sharded(a * FP32, strategy.shard_params),
        "adapter bf16 copy": 0 if strategy.engine == "fsdp" else sharded(a * BF16, strategy.shard_params),
        "adapter grads (fp32)": sharded(a * FP32, strategy.shard_states),
        f"optimizer state ({work.optimizer}, fp32)": sharded(state * FP32, strategy.shard_states),
        "gathered params (bf16)": _gathered(shape, strategy),
        "comm buffers": _comm(shape, strategy),
    }
    out.update(activation_bytes(shape, work))
    out["text encoders (bf16)"] = shape.text_encoder_params * BF16 if work.text_encoders else 0
    out["VAE (bf16)"] = shape.vae_params * BF16 if work.vae else 0
    out["CUDA context + slack"] = int(CUDA_CONTEXT_GIB * GiB)
    return out


def _gathered(shape: ModelShape, strategy: Strategy) -> int:
    if strategy.gather == "all":
        return (shape.base_params + shape.adapter_params) * BF16
    if strategy.gather == "units":
        root = shape.root_params if strategy.engine == "fsdp" else 0  # the root unit stays gathered
        return (2 * shape.largest_unit + root) * BF16
    return 0


def _comm(shape: ModelShape, strategy: Strategy) -> int:
    a = shape.adapter_params
    if strategy.engine == "ddp":
        return a * FP32  # gradient buckets (gradient_as_bucket_view=False)
    return max(t for _, t in shape.units) * BF16  # one unit's unsharded grads before reduce-scatter
