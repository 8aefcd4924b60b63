"""The adapters' state: the gates' L1 penalty, peft's adapter state dict (save / load), one domain as a plain LoRA."""

from __future__ import annotations

import re

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from torch.distributed.tensor import DTensor

from pm_lightning.models.adapter_layers import DomainLoraLinear, MaskedLoraLinear
from pm_lightning.models.adapter_routing import check_domain
from pm_lightning.models.adapters import adapter_parameters, domain_layers, named_tuner_layers, trained_adapters


def mask_l1(transformer: nn.Module) -> torch.Tensor:
    """Mean |gate| over every learnable gate (the gate values, so sigmoid gates' in (0, 1); tied gates once; 0 for the
    other kinds): the sparsity term the caller weights by ``AdapterConfig.mask_l1``.

    Called outside the forward, so under FSDP2 the gates are sharded DTensors: each is gathered whole
    (``full_tensor``, differentiable: its backward hands every rank the gradient of its own shard), so the term is a
    plain tensor that adds to the plain loss, the same value on every rank as in one process."""
    gates = {
        id(layer.lora_gate[a]): _whole(layer.gate_values(a))  # (C, g)
        for layer in domain_layers(transformer)
        if isinstance(layer, MaskedLoraLinear)
        for a in layer.lora_gate
    }
    total = sum(g.numel() for g in gates.values())
    if total == 0:
        p = next(iter(adapter_parameters(transformer)), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return sum(g.abs().sum() for g in gates.values()) / total


def _whole(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered into a plain tensor (differentiably); any other tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def adapter_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """peft's adapter state dict: ``<module>.lora_A.weight``, ``.lora_B.weight``, ``.lora_gate`` (no adapter name)."""
    return get_peft_model_state_dict(transformer)


_ADAPTER_NAME = re.compile(r"\.default(?=\.weight$|$)")


def load_adapter_state_dict(transformer: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load an ``adapter_state_dict`` (keys with or without peft's ``.default``); every key must match."""
    sd = {_ADAPTER_NAME.sub("", k): v for k, v in sd.items()}
    expected = set(adapter_state_dict(transformer))
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise KeyError(
            f"adapter state dict mismatch: missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    set_peft_model_state_dict(transformer, sd)


def domain_lora_state_dict(transformer: nn.Module, domain: int, fold_scale: bool = True) -> dict[str, torch.Tensor]:
    """One domain's adapter as a plain LoRA: ``{<module>.lora_A.weight: (r, k), <module>.lora_B.weight: (d, r)}``.

    masked: B diag(m_domain); asymmetric: B_domain (mean of the Bs for -1); lora: B. With
    ``fold_scale`` B is multiplied by alpha / r, so the LoRA reproduces the output when loaded with
    lora_alpha = r (diffusers' default when a file carries no alpha). Tied A are written per module; a frozen
    adapter beside the trained one (`FROZEN_ADAPTER`) is left out.
    """
    check_domain(transformer, domain)
    out = {}
    with torch.no_grad():
        for name, layer in named_tuner_layers(transformer):
            for adapter in trained_adapters(layer):
                A = layer.lora_A[adapter].weight  # (r, k)
                is_domain = isinstance(layer, DomainLoraLinear)
                B = layer.domain_B(adapter, domain) if is_domain else layer.lora_B[adapter].weight  # (d, r)
                if fold_scale:
                    B = B * layer.scaling[adapter]
                out[f"{name}.lora_A.weight"] = A.detach().clone().contiguous()
                out[f"{name}.lora_B.weight"] = B.detach().clone().contiguous()
    return out
