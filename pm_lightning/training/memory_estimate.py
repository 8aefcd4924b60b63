"""Analytic per-GPU memory of a stage-1 training step under DDP, FSDP2 and DeepSpeed ZeRO-2 (no GPU needed).

Command: `python -m pm_lightning.memory_plan`.

Parameter counts and shapes come from the real model built on the ``meta`` device with the real
``add_adapters`` (so they agree with ``pm_lightning.params``); everything else is a formula of those
shapes, the token count and the strategy. Formulas and assumptions: docs/SCALING.md, "Memory plan".

Per-GPU components (bytes; p = frozen base parameters, a = adapter parameters, n = GPUs, B = batch,
T = image + text tokens, N = image tokens, D = hidden width, K = blocks, L = alignment layers):

* frozen base       p x 2 (bf16). FSDP2 shards each parameter in its own dtype: p x 2 / n.
* adapter weights   a x 4 (fp32), / n when sharded. DeepSpeed: a bf16 module copy a x 2 plus the fp32
                    master a x 4 / n.
* bf16 compute copy DDP: the autocast cache of the fp32 adapters, a x 2. FSDP: inside the gathered units.
* adapter grads     a x 4 (fp32), / n when sharded.
* optimizer state   fp32: CAME = m (full size) + the factored row/column statistics of the squared
                    gradient and of the instability (exact, from the shapes, see `came_state_elements`);
                    AdamW = 2 full states. / n for every strategy except DDP.
* gathered params   FSDP2 (reshard_after_forward: true): the full bf16 parameters of the two largest units
                    (current + prefetched) and the root unit. reshard_after_forward: false: every unit stays
                    gathered from forward to backward: (p + a) x 2.
* comm buffers      DDP: its gradient buckets, one more copy of the grads (a x 4). DeepSpeed: one reduce
                    bucket min(2e8, a) x 2. FSDP: one unit's unsharded bf16 adapter grads.
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
                    DDP only: FSDP2 and DeepSpeed cannot shard / cast the quantized tensors, so those rows are n/a.
* CUDA context      a constant (context, kernels, allocator slack): outside max_memory_allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pm_lightning.models.adapters import AdapterConfig, adapter_parameters, add_adapters

GiB = 2**30
DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
BF16, FP32 = DTYPE_BYTES[torch.bfloat16], DTYPE_BYTES[torch.float32]

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
DEEPSPEED_BUCKET = 200_000_000
"""Lightning's DeepSpeedStrategy default reduce/allgather bucket size, in elements."""
QUANT_BYTES = {"none": 2.0, "int8": 1.0, "fp8": 1.0, "nf4": 4.127 / 8}
"""Bytes per quantizable (Linear weight) parameter of the frozen base (`model.init_args.quantize`): bf16, torchao int8
and fp8 weight-only (per-row scales, negligible), torchao NF4 (4 bits + 0.127 bits of double-quantized block scales).
Order = preference when several fit: int8 before fp8 (same bytes; int8 per-row was 5x closer to the bf16 output on
the tiny base, tests/test_quantize.py, and needs no fp8 hardware)."""
QUANT_STRATEGIES = ("ddp",)
"""Strategies a quantized base trains under (one GPU is the DDP column with --gpus 1)."""
MEASURED_ON_GPU = False
"""Whether the quantized rows have been measured on a GPU (bench/gpu_check.py --quant); not yet."""
FLUX_TEXT_ENCODER_PARAMS = 4_762_310_656 + 123_060_480
"""T5 v1.1 XXL encoder + CLIP ViT-L/14 text model (FLUX.1-dev / schnell's text_encoder_2 and text_encoder)."""
FLUX_VAE_PARAMS = 83_819_683
"""FLUX.1's AutoencoderKL (16 latent channels)."""


# ---------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a transformer with adapters."""

    base_params: int
    """Frozen parameters (the whole base transformer)."""
    adapter_shapes: tuple[tuple[int, ...], ...]
    """Shape of every trainable parameter, each tied parameter once."""
    units: tuple[tuple[int, int], ...]
    """(frozen, trainable) parameters of each FSDP unit: the double- then single-stream blocks."""
    hidden: int
    """Hidden width D."""
    linear_params: int = 0
    """Frozen Linear weights: what a quantized base stores in fp8 / NF4."""
    text_encoder_params: int = 0
    """T5 + CLIP text encoders (on the GPU unless the text cache replaces them)."""
    vae_params: int = 0

    @property
    def adapter_params(self) -> int:
        return sum(math.prod(s) for s in self.adapter_shapes)

    @property
    def root_params(self) -> int:
        """Parameters outside the blocks (embedders, final norm and projection): FSDP's root unit."""
        return self.base_params + self.adapter_params - sum(f + t for f, t in self.units)

    @property
    def num_blocks(self) -> int:
        return len(self.units)

    @property
    def largest_unit(self) -> int:
        return max(f + t for f, t in self.units)


def shape_of(transformer: torch.nn.Module) -> ModelShape:
    """The ModelShape of a Flux transformer with adapters (real or meta device)."""
    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    units = tuple(
        (
            sum(p.numel() for p in b.parameters() if not p.requires_grad),
            sum(p.numel() for p in b.parameters() if p.requires_grad),
        )
        for b in blocks
    )
    cfg = transformer.config
    return ModelShape(
        base_params=sum(p.numel() for p in transformer.parameters() if not p.requires_grad),
        adapter_shapes=tuple(tuple(p.shape) for p in adapter_parameters(transformer)),
        units=units,
        hidden=cfg.num_attention_heads * cfg.attention_head_dim,
        linear_params=sum(
            m.weight.numel()
            for m in transformer.modules()
            if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad
        ),
    )


def model_shape(variant: str, adapter: AdapterConfig) -> ModelShape:
    """Build `variant` on the meta device, add `adapter`, and read its shape (seconds, no memory); FLUX.1's text
    encoders and VAE are known counts, the tiny ones are counted from their configs on the meta device."""
    from dataclasses import replace

    from pm_lightning.models.backbone import meta_transformer

    with torch.device("meta"):
        transformer = meta_transformer(variant)
        add_adapters(transformer, adapter)
    shape = shape_of(transformer)
    if variant in ("flux-dev", "flux-schnell"):
        return replace(shape, text_encoder_params=FLUX_TEXT_ENCODER_PARAMS, vae_params=FLUX_VAE_PARAMS)
    return replace(shape, **_counted_from_configs(variant))


def _counted_from_configs(variant: str) -> dict[str, int]:
    """Text encoder and VAE parameters of a local pipeline, built on the meta device from its configs."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from pm_lightning.models.variants import get_variant
    from pm_lightning.models.weights import resolve_source

    root = resolve_source(get_variant(variant).location())
    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig.from_pretrained(root, subfolder="text_encoder"))
        t5 = T5EncoderModel(T5Config.from_pretrained(root, subfolder="text_encoder_2"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"text_encoder_params": count(clip) + count(t5), "vae_params": count(vae)}


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
    """"ddp", "fsdp" or "deepspeed": who owns the dtypes of the stored parameters."""
    shard_params: bool
    """Frozen base and adapter weights sharded (FSDP2)."""
    shard_states: bool
    """Gradients and optimizer state sharded (everything but DDP)."""
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
        Strategy("zero2", "experiments/strategies/deepspeed_zero2.yaml", "deepspeed", False, True, "none"),
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
        "adapter weights (fp32)": sharded(a * FP32, strategy.shard_params or strategy.engine == "deepspeed"),
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
    if strategy.engine == "deepspeed":
        return min(DEEPSPEED_BUCKET, a) * BF16
    return max(t for _, t in shape.units) * BF16  # one unit's unsharded grads before reduce-scatter


@dataclass(frozen=True)
class Plan:
    strategy: str
    gpus: int
    gpu_gib: float
    components: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_gib * GiB


def plan_all(shape: ModelShape, work: Workload, gpus: int = 8, gpu_gib: float = 48) -> list[Plan]:
    """One Plan per strategy in STRATEGIES."""
    return [Plan(name, gpus, gpu_gib, components(shape, work, s, gpus)) for name, s in STRATEGIES.items()]


SPEED_ORDER = ("ddp", "zero2", "fsdp_shard_grad_op", "fsdp_full_shard")
"""Fastest first: DDP communicates least; FSDP2 with resharding gathers every unit twice per step."""


def options(shape: ModelShape, work: Workload, gpus: int, gpu_gib: float) -> list[dict]:
    """Every (text cache, quantization, strategy) of `work` with its total per GPU and whether it fits."""
    from dataclasses import replace

    out = []
    for text_encoders in (False, True):
        for quant in QUANT_BYTES:
            w = replace(work, text_encoders=text_encoders, quant=quant)
            for plan in plan_all(shape, w, gpus, gpu_gib):
                if quant != "none" and plan.strategy not in QUANT_STRATEGIES:
                    continue  # not a configuration that runs
                out.append(
                    {"strategy": plan.strategy, "quant": quant, "text_cache": not text_encoders}
                    | {"total": plan.total, "fits": plan.fits}
                )
    return out


def recommend(shape: ModelShape, work: Workload, gpus: int, gpu_gib: float) -> dict | None:
    """The configuration to use on this card: text cache on, the least quantization that fits, then the fastest
    strategy that fits; None when nothing does (fewer tokens, a smaller adapter or more GPUs)."""
    fitting = [o for o in options(shape, work, gpus, gpu_gib) if o["fits"] and o["text_cache"]]
    quant_rank = list(QUANT_BYTES)
    fitting.sort(key=lambda o: (quant_rank.index(o["quant"]), SPEED_ORDER.index(o["strategy"])))
    return fitting[0] if fitting else None


def format_options(shape: ModelShape, work: Workload, gpus: int, gpu_gib: float) -> str:
    """Markdown: total GiB per GPU of every strategy x quantization, with and without the text cache, and the
    recommendation."""
    opts = options(shape, work, gpus, gpu_gib)
    lines = [
        f"| {gpus} x {gpu_gib:g} GiB: total GiB per GPU | " + " | ".join(STRATEGIES) + " |",
        "|---" + "|---:" * len(STRATEGIES) + "|",
    ]
    for cache in (True, False):
        for quant in QUANT_BYTES:
            row = {o["strategy"]: o for o in opts if o["quant"] == quant and o["text_cache"] == cache}
            cells = [
                f"{row[s]['total'] / GiB:.1f}{'' if row[s]['fits'] else ' (no)'}" if s in row else "n/a"
                for s in STRATEGIES
            ]
            label = f"base {quant if quant != 'none' else 'bf16'}, {'text cache' if cache else 'T5 + CLIP on GPU'}"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    best = recommend(shape, work, gpus, gpu_gib)
    if best is None:
        lines.append(
            f"\nrecommended on {gpu_gib:g} GiB: nothing fits; use more GPUs, fewer tokens or a smaller adapter"
        )
    else:
        config = STRATEGIES[best["strategy"]].config
        quant = "" if best["quant"] == "none" else f", frozen base in {best['quant']} (quantize: {best['quant']})"
        if best["quant"] != "none" and not MEASURED_ON_GPU:
            quant += " [trains on CPU in the tests; its GPU memory is this plan's figure, not yet measured]"
        latents = "" if work.vae else ", latent cache (latent_cache_dir)"
        lines.append(
            f"\nrecommended on {gpu_gib:g} GiB: {best['strategy']} ({config}), text cache (text_cache_only: true)"
            f"{latents}{quant}: {best['total'] / GiB:.1f} GiB per GPU"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report


def format_table(plans: list[Plan], shape: ModelShape, work: Workload) -> str:
    """A markdown table: one row per component, one column per strategy, GiB per GPU."""
    names = list(plans[0].components)
    head = (
        f"| GiB per GPU ({plans[0].gpus} x {plans[0].gpu_gib:g} GiB) | " + " | ".join(p.strategy for p in plans) + " |"
    )
    lines = [
        f"base {shape.base_params:,} params, adapters {shape.adapter_params:,} ({work.optimizer}); {work.tokens} tokens "
        f"({work.image_tokens} image + {work.text_tokens} text) x batch {work.batch} per GPU; "
        f"{work.align_layers} alignment layers; checkpointing {'on' if work.checkpointing else 'off'}; "
        f"text encoders {'on the GPU' if work.text_encoders else 'off (text cache)'}; "
        f"VAE {'on the GPU' if work.vae else 'off (latent cache)'}; base {work.quant}",
        "",
        head,
        "|---" + "|---:" * len(plans) + "|",
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{p.components[name] / GiB:.2f}" for p in plans) + " |")
    lines.append("| **total** | " + " | ".join(f"**{p.total / GiB:.2f}**" for p in plans) + " |")
    runs = lambda p: work.quant == "none" or p.strategy in QUANT_STRATEGIES  # noqa: E731
    fits = ["n/a (quantize: DDP only)" if not runs(p) else "yes" if p.fits else "NO" for p in plans]
    lines.append("| fits | " + " | ".join(fits) + " |")
    return "\n".join(lines)


def to_json(plans: list[Plan], shape: ModelShape, work: Workload) -> dict:
    return {
        "base_params": shape.base_params,
        "adapter_params": shape.adapter_params,
        "workload": {
            "tokens": work.tokens,
            "text_tokens": work.text_tokens,
            "batch": work.batch,
            "align_layers": work.align_layers,
            "checkpointing": work.checkpointing,
            "optimizer": work.optimizer,
            "text_encoders": work.text_encoders,
            "quant": work.quant,
            "vae": work.vae,
        },
        "plans": {
            p.strategy: {"gpus": p.gpus, "gpu_gib": p.gpu_gib, "bytes": p.components, "total": p.total, "fits": p.fits}
            for p in plans
        },
    }
