"""Which domain's adapter a forward uses: per-sample routing, merging one domain into the base, the base alone.

Domains are chosen per sample: ``set_domains(transformer, LongTensor (B,))`` before the forward.
``UNSEEN_DOMAIN = -1`` (or ``domains=None`` for the whole batch) means "no domain-specific part":
masked -> the ``unseen_mask`` (all ones, "mask removed", by default; ``shared``; ``mean``); asymmetric -> the mean
of the domain Bs; lora -> as is. ``None`` is routed exactly as a batch of -1.
The domains are module state, not forward arguments, so gradient checkpointing recomputes with the
same routing as long as the state still holds at backward time: call ``set_domains`` in the
training step (it persists) rather than leaving a ``use_domains`` block before ``backward``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from pm_lightning.data.domains import UNSEEN_DOMAIN
from pm_lightning.models.adapter_layers import DomainLoraLinear
from pm_lightning.models.adapters import FROZEN_ADAPTER, domain_layers, tuner_layers


def _num_domains(transformer: nn.Module) -> int:
    cfg = getattr(transformer, "pm_adapter_config", None)
    return cfg.num_domains if cfg is not None else 1


def check_domain(transformer: nn.Module, domain: int) -> None:
    c = _num_domains(transformer)
    if not UNSEEN_DOMAIN <= domain < c:
        raise ValueError(f"domain {domain} out of range: expected -1 (unseen) or 0..{c - 1}")


def set_domains(transformer: nn.Module, domains: torch.Tensor | None) -> None:
    """Route each sample of the next forward(s) to its domain: LongTensor (B,), -1 = unseen; None = all unseen.

    The state persists until changed (so a backward pass with gradient checkpointing recomputes
    with the same routing). A no-op for the plain ``lora`` kind beyond validation.
    """
    layers = domain_layers(transformer)
    if domains is not None:
        domains = torch.as_tensor(domains, dtype=torch.long)
        if domains.dim() != 1:
            raise ValueError(f"domains must be a 1-D LongTensor (B,), got shape {tuple(domains.shape)}")
        c = _num_domains(transformer)
        if domains.numel() and (int(domains.min()) < UNSEEN_DOMAIN or int(domains.max()) >= c):
            raise ValueError(f"domains must lie in -1..{c - 1}, got {domains.tolist()}")
        if layers and layers[0].lora_A:
            device = next(iter(layers[0].lora_A.values())).weight.device
            domains = domains.to(device) if device.type != "meta" else domains
    for layer in layers:
        layer.domains = domains


def _get_domains(transformer: nn.Module) -> torch.Tensor | None:
    layers = domain_layers(transformer)
    return layers[0].domains if layers else None


@contextmanager
def use_domains(transformer: nn.Module, domains: torch.Tensor | None):
    """``set_domains`` for the duration of the block, then restore the previous routing.

    With gradient checkpointing, call ``backward`` inside the block (recomputation reads the state).
    """
    previous = _get_domains(transformer)
    set_domains(transformer, domains)
    try:
        yield
    finally:
        set_domains(transformer, previous)


# ---------------------------------------------------------------- disable / merge


@contextmanager
def adapters_disabled(transformer: nn.Module):
    """Inside: the exact base model (the alignment teacher): every trained adapter off, a frozen one
    (`FROZEN_ADAPTER`, part of stage 2's base) still on. Leaves requires_grad untouched.

    peft's ``enable_adapters(False)`` would also set requires_grad=False on the adapters, which
    breaks DDP/FSDP bookkeeping mid-step, so only the layers' disable flag (or, beside a frozen adapter, their
    active-adapter list) is flipped. A merged model is unmerged inside and merged again (same domain) on exit.
    """
    merged = getattr(transformer, "pm_merged_domain", None)
    if merged is not None:
        unmerge_adapters(transformer)
    layers = list(tuner_layers(transformer))
    saved = [(layer._disable_adapters, layer._active_adapter) for layer in layers]
    for layer in layers:
        if FROZEN_ADAPTER in layer.lora_A:
            layer._active_adapter = [FROZEN_ADAPTER]
        else:
            layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, (flag, active) in zip(layers, saved):
            layer._disable_adapters, layer._active_adapter = flag, active
        if merged is not None:
            merge_adapters(transformer, merged)


def merge_adapters(transformer: nn.Module, domain: int) -> None:
    """Fold one domain's adapter into the base weights (peft merge); a previous merge is undone first.

    While merged, the forward ignores the routing and gives that domain's output for every sample.
    """
    check_domain(transformer, domain)
    if getattr(transformer, "pm_merged_domain", None) is not None:
        unmerge_adapters(transformer)
    for layer in tuner_layers(transformer):
        if isinstance(layer, DomainLoraLinear):
            layer.merge_domain = domain
        layer.merge()
    transformer.pm_merged_domain = domain


def unmerge_adapters(transformer: nn.Module) -> None:
    """Subtract the merged adapter from the base weights again (peft unmerge)."""
    for layer in tuner_layers(transformer):
        if layer.merged:
            layer.unmerge()
    transformer.pm_merged_domain = None
