"""The memory plan of a `fit` config: an experiment merged with overlays (a GPU preset, `experiments/presets/*.yaml`;
a strategy) -> its strategy, GPU count and workload -> `scaling/memory_formulas.py`'s per-GPU plan.

    python -m pm_lightning.memory_plan --config experiments/fabric_toys.yaml --config experiments/presets/24gb.yaml \\
        --card-gib 24

The YAML files are merged as LightningCLI merges them (`core/config_files.py`: mappings key by key, lists replaced, and
a `class_path` that changes drops the earlier `init_args`; tests/test_presets.py checks the result against
`fit --print_config`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.variants import VARIANTS
from pm_lightning.scaling.memory_formulas import QUANT_STRATEGIES, STRATEGIES, GiB, Workload, components
from pm_lightning.scaling.model_shapes import ModelShape, model_shape
from pm_lightning.scaling.plan_search import Plan

HEADROOM = 0.10
"""A preset must leave this fraction of the card free: the plan is a model (activations partly assumed)."""
TOKEN_PX = 16
"""Pixels per Flux image token side (8x VAE downsampling, 2x2 packing)."""


@dataclass(frozen=True)
class ConfigLoad:
    """What a fit config asks of each GPU."""

    variant: str
    adapter: AdapterConfig
    work: Workload
    strategy: str
    """A `memory_formulas.STRATEGIES` name ("ddp" also for one device without a strategy: it counts DDP's buckets)."""
    gpus: int
    """The GPUs one copy of the model is spread over: all of them, or under HSDP one shard group."""


def config_load(cfg: dict) -> ConfigLoad:
    """Read variant, adapter, workload, strategy and GPU count from a merged (or `--print_config`) fit config."""
    trainer, data = cfg.get("trainer") or {}, cfg.get("data") or {}
    args = (cfg.get("model") or {}).get("init_args") or {}
    variant = args.get("base", "tiny")
    if variant not in VARIANTS:
        raise ValueError(f"model.init_args.base {variant!r}: the memory plan knows the variants {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    adapter = AdapterConfig.from_dict({**(args.get("adapter") or {}), "num_domains": len(data.get("domains") or [1])})
    align = args.get("alignment") or {}
    layers = (align.get("layers") or v.align_layers) if align.get("enabled") else ()
    work = Workload(
        tokens=grid_side(args, data) ** 2 // TOKEN_PX**2 + v.max_sequence_length,
        text_tokens=v.max_sequence_length,
        batch=int(data.get("batch_size", 1)),
        align_layers=len(layers),
        checkpointing=bool(args.get("gradient_checkpointing", False)),
        optimizer=(args.get("optimizer") or {}).get("name", "came"),
        text_encoders=not args.get("text_cache_only", False),
        quant=args.get("quantize", "none"),
        vae=not args.get("latent_cache_dir"),
    )
    strategy = strategy_name(trainer.get("strategy"))
    if work.quant != "none" and strategy not in QUANT_STRATEGIES:
        raise ValueError(f"model.init_args.quantize {work.quant!r} trains on one device or under DDP, not {strategy}")
    return ConfigLoad(variant, adapter, work, strategy, shard_group(trainer))


def grid_side(args: dict, data: dict) -> int:
    """The side in px of the grids the transformer sees: stage 2 (dual) builds 2 x `cell`, the others `data.resolution`."""
    if args.get("mode", "recraft") == "dual" and "cell" in args:
        return 2 * int(args["cell"])
    return int(data.get("resolution", 192))


def strategy_name(strategy) -> str:
    """The plan's strategy for a trainer.strategy value (a class_path mapping or a name)."""
    if not isinstance(strategy, dict):
        name = strategy or "auto"
        if name in ("auto", "ddp", "ddp_spawn", "single_device"):
            return "ddp"
        raise ValueError(f"trainer.strategy {name!r}: the memory plan knows DDP and FSDP2 configs")
    path, init = strategy.get("class_path", ""), strategy.get("init_args") or {}
    if path.endswith(("FluxFSDP2Strategy", "FluxHSDPStrategy")):  # HSDP: FSDP2 over its shard group
        return "fsdp_full_shard" if init.get("reshard_after_forward", True) else "fsdp_shard_grad_op"
    if path.endswith("DDPStrategy"):
        return "ddp"
    raise ValueError(f"trainer.strategy {path!r}: the memory plan knows DDP and FSDP2 configs")


def gpu_count(trainer: dict) -> int:
    """trainer.devices (a count or a list of ids) x trainer.num_nodes."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, str):
        devices = len(devices.split(",")) if "," in devices else int(devices) if devices.isdigit() else None
    if devices is None:
        raise ValueError("trainer.devices 'auto' / -1: give the GPU count (--trainer.devices N) to plan memory")
    count = len(devices) if isinstance(devices, list) else int(devices)
    return count * int(trainer.get("num_nodes", 1) or 1)


def shard_group(trainer: dict) -> int:
    """The GPUs one copy of the model is sharded over (or replicated on, under DDP): every GPU, except under HSDP
    (experiments/strategies/hsdp.yaml) its shard group: `shard_size`, else trainer.devices (one node)."""
    strategy = trainer.get("strategy")
    if isinstance(strategy, dict) and strategy.get("class_path", "").endswith("FluxHSDPStrategy"):
        size = (strategy.get("init_args") or {}).get("shard_size")
        return int(size) if size else gpu_count(trainer) // int(trainer.get("num_nodes", 1) or 1)
    return gpu_count(trainer)


def plan_config(cfg: dict, card_gib: float, gpus: int | None = None) -> tuple[Plan, ModelShape, Workload]:
    """The per-GPU plan of a fit config on cards of `card_gib` GiB (`gpus` overrides the config's count), with the
    model shape and workload it was made from."""
    load = config_load(cfg)
    shape = model_shape(load.variant, load.adapter)
    n = gpus or load.gpus
    return (
        Plan(load.strategy, n, card_gib, components(shape, load.work, STRATEGIES[load.strategy], n)),
        shape,
        load.work,
    )


def headroom(plan: Plan) -> float:
    """The fraction of the card the plan leaves free (negative: it does not fit)."""
    return 1 - plan.total / (plan.gpu_gib * GiB)
