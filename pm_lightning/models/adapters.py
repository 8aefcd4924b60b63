"""LoRA adapters on a diffusers Flux transformer: plain, asymmetric (MakeAnything), masked (ProcessMaker).

This module injects them and walks them; the kinds and their settings are `models/adapter_config.py`, the
per-sample routing and merging `models/adapter_routing.py`, state dicts and the gate penalty
`models/adapter_state.py`, the peft layers `models/adapter_layers.py`.

Default targets: every ``nn.Linear`` of ``transformer_blocks`` and ``single_transformer_blocks``.
With ``fused_qkv=True`` (default) the projections that the original (BFL) Flux checkpoint stores
as one fused Linear share one A and, for ``masked``, one gate table: image q/k/v and text q/k/v
of a double block, q/k/v/mlp-in of a single block. That is exactly a LoRA on the fused layer, the
layer the reference trainers (kohya -> MakeAnything -> ProcessMaker) adapt; it is what makes the
parameter count reproduce the papers' 306.32M / 4.19B (docs/PARAMS.md). ``fused_qkv=False`` gives
every Linear its own A.

All tuner layers are peft ``BaseTunerLayer``s, so peft's ``merge``/``unmerge``,
``enable_adapters`` and ``get_peft_model_state_dict`` work on them; these modules add the routing,
the fused-group tying, and domain-aware merge / export.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from pm_lightning.core.compat import register_custom_lora_layer
from pm_lightning.models.adapter_config import ADAPTER_KINDS, KINDS, AdapterConfig
from pm_lightning.models.adapter_layers import DomainLoraLinear, MaskedLoraLinear

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")
# A frozen, unmerged adapter under the trained one (stage 2's stage-1 LoRA, loaded by diffusers:
# `models/lora_files.py::load_frozen_lora_file`): active in every forward, never trained, exported or checkpointed.
FROZEN_ADAPTER = "stage1"
# Linears that BFL's checkpoint fuses into one layer (img_attn.qkv, txt_attn.qkv, single linear1).
FUSED_GROUPS = {
    "transformer_blocks": (
        ("attn.to_q", "attn.to_k", "attn.to_v"),
        ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    ),
    "single_transformer_blocks": (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),),
}


# ---------------------------------------------------------------- injection


def resolve_targets(transformer: nn.Module, target_modules: list[str] | None = None) -> list[str]:
    """Full names of the block Linears to adapt (all of them when target_modules is None); a Linear that already
    carries a (frozen) peft adapter is named by its peft layer, and the Linears inside that layer are skipped."""
    wrapped = {n for n, m in transformer.named_modules() if isinstance(m, LoraLayer)}
    names = []
    for list_name in BLOCK_LISTS:
        for name, module in transformer.named_modules():
            if not (name.startswith(list_name + ".") and (isinstance(module, nn.Linear) or name in wrapped)):
                continue
            parts = name.split(".")
            if any(".".join(parts[:k]) in wrapped for k in range(1, len(parts))):
                continue  # base_layer / lora_A.<name> of a peft layer
            rel = name.split(".", 2)[2]  # "<list>.<i>.<rel>"
            if target_modules is None or any(rel == t or name == t or name.endswith("." + t) for t in target_modules):
                names.append(name)
    return names


def _layer_factory(cfg: AdapterConfig):
    """The peft custom-module class of cfg.kind (None = stock peft lora.Linear), its extra kwargs bound; an unknown kind
    (a config changed after it was validated) raises."""
    kind = ADAPTER_KINDS.get(cfg.kind)
    if kind is None:
        raise ValueError(f"unknown adapter kind {cfg.kind!r}; known: {KINDS}")
    if kind.layer is None:
        return None
    cls, extra = kind.layer, kind.layer_args(cfg)

    def make(base_layer, adapter_name, **kwargs):
        return cls(base_layer, adapter_name, **kwargs, **extra)

    return make


def add_adapters(transformer: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Inject cfg's adapters into `transformer` in place and return the adapted module names.

    Freezes every base parameter; adapter parameters are fp32 and trainable. Works on the meta
    device (no memory) when called under ``with torch.device("meta")`` on a meta model.
    Over a frozen adapter (`FROZEN_ADAPTER`, already in the model) a plain LoRA is added beside it in the same peft
    layers, both active (peft's multi-adapter `set_adapter`), the frozen one staying frozen.
    """
    frozen = any(FROZEN_ADAPTER in layer.lora_A for layer in tuner_layers(transformer))
    if any(trained_adapters(layer) for layer in tuner_layers(transformer)):
        raise ValueError("transformer already has adapters; build a fresh one (or merge and reload)")
    names = resolve_targets(transformer, cfg.target_modules)
    if not names:
        raise ValueError(f"AdapterConfig.target_modules={cfg.target_modules!r} matched no Linear in {BLOCK_LISTS}")
    transformer.requires_grad_(False)
    lora_cfg = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.lora_alpha, target_modules=names, lora_dropout=0.0, init_lora_weights=True
    )
    factory = _layer_factory(cfg)
    if factory is not None and frozen:
        raise ValueError(f"a {cfg.kind!r} adapter cannot go over the frozen {FROZEN_ADAPTER!r} LoRA; only 'lora' can")
    if factory is not None:
        register_custom_lora_layer(lora_cfg, {nn.Linear: factory})
    inject_adapter_in_model(lora_cfg, transformer)
    if frozen:  # peft keeps a layer's old active adapter when it gains one: activate both, train only the new
        for layer in tuner_layers(transformer):
            layer.set_adapter([a for a in (FROZEN_ADAPTER, "default") if a in layer.lora_A])
        transformer.requires_grad_(False)
    if cfg.fused_qkv:
        _tie_fused_groups(transformer, names)
    for p in adapter_parameters(transformer):
        p.data = p.data.float()
        p.requires_grad_(True)
    transformer.pm_adapter_config = cfg
    transformer.pm_merged_domain = None
    return names


def _tie_fused_groups(transformer: nn.Module, names: list[str]) -> None:
    """Make the targeted members of each fused group share the first member's A (and gates)."""
    targeted = set(names)
    for list_name, groups in FUSED_GROUPS.items():
        for i in range(len(getattr(transformer, list_name, []))):
            for group in groups:
                members = [f"{list_name}.{i}.{m}" for m in group if f"{list_name}.{i}.{m}" in targeted]
                if len(members) < 2:
                    continue
                lead = transformer.get_submodule(members[0])
                for name in members[1:]:
                    _share(lead, transformer.get_submodule(name))


def _share(lead: LoraLayer, layer: LoraLayer) -> None:
    """Point layer's A (and gates) at lead's (the trained adapter's; a frozen adapter keeps its own)."""
    for adapter in trained_adapters(lead):
        layer.lora_A[adapter] = lead.lora_A[adapter]
        if isinstance(lead, MaskedLoraLinear):
            layer.lora_gate[adapter] = lead.lora_gate[adapter]


# ---------------------------------------------------------------- walking


def tuner_layers(transformer: nn.Module) -> Iterator[LoraLayer]:
    """Every peft LoRA layer of the model."""
    return (m for m in transformer.modules() if isinstance(m, LoraLayer))


def named_tuner_layers(transformer: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(name, layer) for every peft LoRA layer of the model."""
    return ((n, m) for n, m in transformer.named_modules() if isinstance(m, LoraLayer))


def domain_layers(transformer: nn.Module) -> list[DomainLoraLinear]:
    return [m for m in transformer.modules() if isinstance(m, DomainLoraLinear)]


def trained_adapters(layer: LoraLayer) -> list[str]:
    """The adapter names of `layer` that train (all but the frozen `FROZEN_ADAPTER`)."""
    return [a for a in layer.lora_A if a != FROZEN_ADAPTER]


def adapter_parameters(transformer: nn.Module) -> list[nn.Parameter]:
    """The trained adapters' parameters, each once (tied A / gates appear once; a frozen adapter's are left out)."""
    seen, out = set(), []
    for layer in tuner_layers(transformer):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr, None)
            if container is None:
                continue
            for name in trained_adapters(layer):
                if name not in container:
                    continue
                sub = container[name]
                for p in [sub] if isinstance(sub, nn.Parameter) else sub.parameters():
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                    out.append(p)
    return out


def materialize_adapters(transformer: nn.Module, device: str | torch.device = "cpu") -> None:
    """Give the adapters of a meta-device skeleton real (uninitialised) storage; the base stays on meta.

    For jobs that only read the adapters (export): load them next with ``load_adapter_state_dict``.
    Ties survive (parameters are converted in place).
    """
    for layer in tuner_layers(transformer):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr, None)
            if container is not None:
                container.to_empty(device=device)
