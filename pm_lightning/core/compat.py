"""The private APIs of other libraries that the project leans on, each wrapped here and nowhere else.

An upgrade that changes one of them fails here, loudly, with the library and what changed
(`tests/test_compat.py` calls each wrapper against the installed versions).
"""

from __future__ import annotations

from typing import Any

import peft
import torch
from torch.nn.parallel import DistributedDataParallel


class CompatError(RuntimeError):
    """An installed library no longer has a private API that pm_lightning relies on."""


def register_custom_lora_layer(lora_config, mapping: dict) -> None:
    """peft: make `inject_adapter_in_model` build our layer classes (masked / asymmetric LoRA) for `nn.Linear`.

    peft's hook for custom layers is the private `LoraConfig._register_custom_module(mapping)`
    (mapping: base layer type -> factory(base_layer, adapter_name, **kwargs)).
    """
    register = getattr(lora_config, "_register_custom_module", None)
    if register is None:
        raise CompatError(
            f"peft {peft.__version__}: LoraConfig._register_custom_module is gone, so masked / asymmetric "
            "adapters cannot be injected; pin peft to the version in constraints.txt"
        )
    register(mapping)


def nf4_weight_only_config():
    """torchao: the `quantize_` config that stores Linear weights as NF4Tensor (blocks of 64, scaler blocks of 256).

    torchao keeps it in the private `torchao.prototype._nf4tensor_api.NF4WeightOnlyConfig` (the NF4Tensor itself is
    public, `torchao.quantization.NF4Tensor`).
    """
    try:
        # lazy: torchao is the optional extra `quant` (core/extras.py)
        from torchao.prototype._nf4tensor_api import NF4WeightOnlyConfig
    except ImportError as err:
        # lazy: torchao is the optional extra `quant` (core/extras.py)
        import torchao

        raise CompatError(
            f"torchao {torchao.__version__}: torchao.prototype._nf4tensor_api.NF4WeightOnlyConfig is gone, so "
            "quantize: nf4 cannot build its config; pin torchao to the version in constraints.txt"
        ) from err
    return NF4WeightOnlyConfig()


def ddp_ignore(module, names: list[str]) -> None:
    """torch DDP: leave the parameters / buffers `names` (relative to `module`) out of DDP's initial broadcast and its
    gradient reducer.

    DDP reads the private attribute `module._ddp_params_and_buffers_to_ignore`, which the private static
    `DistributedDataParallel._set_params_and_buffers_to_ignore_for_model` sets.
    """
    setter = getattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
    if setter is None:
        raise CompatError(
            f"torch {torch.__version__}: DistributedDataParallel._set_params_and_buffers_to_ignore_for_model is gone, "
            "so the frozen base cannot be kept out of DDP's broadcast; pin torch to the version in constraints.txt"
        )
    setter(module, sorted(set(names) | set(getattr(module, "_ddp_params_and_buffers_to_ignore", []))))


def wandb_init_kwargs(logger) -> dict[str, Any]:
    """Lightning: the keyword arguments `WandbLogger` will pass to `wandb.init` (mutable until the run starts).

    Lightning keeps them in the private `WandbLogger._wandb_init`; the run's group, tags and directory are
    decided after the logger is built (by the CLI), so they are written there.
    """
    init = getattr(logger, "_wandb_init", None)
    if not isinstance(init, dict) or not hasattr(logger, "_save_dir"):
        # lazy: lightning, 1.0 s before export / params read their flags (docs/ARCHITECTURE.md, "Start-up")
        import lightning

        raise CompatError(
            f"lightning {lightning.__version__}: WandbLogger no longer keeps `_wandb_init` (dict) and `_save_dir`; "
            "the W&B run's group, tags and directory cannot be set; pin lightning to the version in constraints.txt"
        )
    return init


def set_wandb_dir(logger, path: str) -> None:
    """Lightning: move a not-yet-started `WandbLogger`'s files to `path` (its `save_dir`)."""
    wandb_init_kwargs(logger)["dir"] = path
    logger._save_dir = path
