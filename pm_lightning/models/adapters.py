"""LoRA adapters on a diffusers Flux transformer: plain, asymmetric (MakeAnything), masked (ProcessMaker).

One LoRA (A: r x k, B: d x r, scale alpha / r) on each target Linear, injected by peft:

* ``lora``        delta W = B A (stock peft ``lora.Linear``).
* ``asymmetric``  delta W_c = B_c A: shared A, one B per domain c (``AsymmetricLoraLinear``).
* ``masked``      delta W_c = B diag(m_c) A (``MaskedLoraLinear``): the first g = round(rho * r) rank
  rows carry a learnable gate per domain (initialised to 1; ``mask_l1`` measures |gates| for an
  optional L1 pull towards 0); the other r - g rows are shared, fixed at 1 for every domain and are
  not parameters.

Domains are chosen per sample: ``set_domains(transformer, LongTensor (B,))`` before the forward.
``UNSEEN_DOMAIN = -1`` (or ``domains=None`` for the whole batch) means "no domain-specific part":
masked -> the all-ones mask ("mask removed"); asymmetric -> the mean of the domain Bs; lora -> as is.
The domains are module state, not forward arguments, so gradient checkpointing recomputes with the
same routing as long as the state still holds at backward time: call ``set_domains`` in the
training step (it persists) rather than leaving a ``use_domains`` block before ``backward``.

Default targets: every ``nn.Linear`` of ``transformer_blocks`` and ``single_transformer_blocks``.
With ``fused_qkv=True`` (default) the projections that the original (BFL) Flux checkpoint stores
as one fused Linear share one A and, for ``masked``, one gate table: image q/k/v and text q/k/v
of a double block, q/k/v/mlp-in of a single block. That is exactly a LoRA on the fused layer, the
layer the reference trainers (kohya -> MakeAnything -> ProcessMaker) adapt; it is what makes the
parameter count reproduce the papers' 306.32M / 4.19B (docs/PARAMS.md). ``fused_qkv=False`` gives
every Linear its own A.

All tuner layers are peft ``BaseTunerLayer``s, so peft's ``merge``/``unmerge``,
``enable_adapters`` and ``get_peft_model_state_dict`` work on them; this module adds the routing,
the fused-group tying, and domain-aware merge / export.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Literal

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from pm_lightning.core.compat import register_custom_lora_layer
from pm_lightning.core.validate import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt
from pm_lightning.data.domains import UNSEEN_DOMAIN
from pm_lightning.models.adapter_layers import AsymmetricLoraLinear, DomainLoraLinear, MaskedLoraLinear

KINDS = ("lora", "asymmetric", "masked")
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")
# Linears that BFL's checkpoint fuses into one layer (img_attn.qkv, txt_attn.qkv, single linear1).
FUSED_GROUPS = {
    "transformer_blocks": (
        ("attn.to_q", "attn.to_k", "attn.to_v"),
        ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    ),
    "single_transformer_blocks": (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),),
}


@dataclass
class AdapterConfig:
    """Which adapter, where, and how big."""

    kind: Literal["lora", "asymmetric", "masked"] = "masked"
    """lora (one plain LoRA), asymmetric (shared A, a B per domain), masked (one LoRA + per-domain row gates)."""
    rank: PositiveInt = 64
    """LoRA rank r."""
    alpha: PositiveFloat | None = None
    """LoRA alpha; the update is scaled by alpha / rank. None -> rank (scale 1)."""
    num_domains: PositiveInt = 1
    """Number of configured (training) domains; index -1 is the unseen domain."""
    target_modules: list[str] | None = None
    """Linear names (relative to a block, e.g. "attn.to_q", or suffixes of full names); None -> every Linear of the blocks."""
    mask_fraction: Fraction = 0.3
    """rho: the fraction of rank rows with learnable per-domain gates (masked only); g = round(rho * r), at least 1 if rho > 0."""
    mask_l1: NonNegativeFloat = 0.0
    """Weight of the L1 pull of the gates towards 0 (applied by the training module to ``mask_l1()``)."""
    unseen_mask: Literal["ones", "mean"] = "ones"
    """masked: the gates of an unseen domain. "ones": the mask removed (ProcessMaker, the default); "mean": the mean
    of the trained domain gates (the masked analogue of MakeAnything's mean of the Bs; an ablation follow-up)."""
    fused_qkv: bool = True
    """Share A (and gates) across the projections BFL's Flux fuses (q/k/v; single-block q/k/v/mlp)."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"AdapterConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"AdapterConfig.rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"AdapterConfig.alpha must be positive or None, got {self.alpha!r}")
        if not isinstance(self.num_domains, int) or self.num_domains < 1:
            raise ValueError(f"AdapterConfig.num_domains must be a positive integer, got {self.num_domains!r}")
        if self.target_modules is not None and (isinstance(self.target_modules, str) or not self.target_modules):
            raise ValueError(
                f"AdapterConfig.target_modules must be a non-empty list of names or None, got {self.target_modules!r}"
            )
        if not 0.0 <= self.mask_fraction <= 1.0:
            raise ValueError(f"AdapterConfig.mask_fraction must be in [0, 1], got {self.mask_fraction!r}")
        if self.unseen_mask not in ("ones", "mean"):
            raise ValueError(f"AdapterConfig.unseen_mask must be 'ones' or 'mean', got {self.unseen_mask!r}")
        if not self.mask_l1 >= 0.0:
            raise ValueError(f"AdapterConfig.mask_l1 must be >= 0, got {self.mask_l1!r}")

    @property
    def lora_alpha(self) -> float:
        """alpha with the None default resolved (= rank)."""
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def num_gated(self) -> int:
        """g: the number of leading rank rows with per-domain gates (round half up, at least 1 if rho > 0)."""
        if self.mask_fraction == 0:
            return 0
        return max(1, int(self.mask_fraction * self.rank + 0.5))

    @classmethod
    def from_dict(cls, d: dict) -> AdapterConfig:
        """Build from a plain dict (checkpoint hyper-parameters); unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AdapterConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------- injection


def resolve_targets(transformer: nn.Module, target_modules: list[str] | None = None) -> list[str]:
    """Full names of the block Linears to adapt (all of them when target_modules is None)."""
    names = []
    for list_name in BLOCK_LISTS:
        for name, module in transformer.named_modules():
            if not (name.startswith(list_name + ".") and isinstance(module, nn.Linear)):
                continue
            rel = name.split(".", 2)[2]  # "<list>.<i>.<rel>"
            if target_modules is None or any(rel == t or name == t or name.endswith("." + t) for t in target_modules):
                names.append(name)
    return names


def _layer_factory(cfg: AdapterConfig):
    """The peft custom-module class for cfg.kind (None = stock peft lora.Linear), with its extra kwargs bound."""
    if cfg.kind == "lora":
        return None
    cls = MaskedLoraLinear if cfg.kind == "masked" else AsymmetricLoraLinear
    extra = dict(num_domains=cfg.num_domains)
    if cfg.kind == "masked":
        extra.update(num_gated=cfg.num_gated, unseen_mask=cfg.unseen_mask)

    def make(base_layer, adapter_name, **kwargs):
        return cls(base_layer, adapter_name, **kwargs, **extra)

    return make


def add_adapters(transformer: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Inject cfg's adapters into `transformer` in place and return the adapted module names.

    Freezes every base parameter; adapter parameters are fp32 and trainable. Works on the meta
    device (no memory) when called under ``with torch.device("meta")`` on a meta model.
    """
    if any(True for _ in tuner_layers(transformer)):
        raise ValueError("transformer already has adapters; build a fresh one (or merge and reload)")
    names = resolve_targets(transformer, cfg.target_modules)
    if not names:
        raise ValueError(f"AdapterConfig.target_modules={cfg.target_modules!r} matched no Linear in {BLOCK_LISTS}")
    transformer.requires_grad_(False)
    lora_cfg = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.lora_alpha, target_modules=names, lora_dropout=0.0, init_lora_weights=True
    )
    factory = _layer_factory(cfg)
    if factory is not None:
        register_custom_lora_layer(lora_cfg, {nn.Linear: factory})
    inject_adapter_in_model(lora_cfg, transformer)
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
    """Point layer's A (and gates) at lead's."""
    for adapter in lead.lora_A:
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


def _domain_layers(transformer: nn.Module) -> list[DomainLoraLinear]:
    return [m for m in transformer.modules() if isinstance(m, DomainLoraLinear)]


def adapter_parameters(transformer: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters, each once (tied A / gates appear once)."""
    seen, out = set(), []
    for layer in tuner_layers(transformer):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr, None)
            if container is None:
                continue
            for p in container.parameters():
                if id(p) not in seen:
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


# ---------------------------------------------------------------- domains


def _num_domains(transformer: nn.Module) -> int:
    cfg = getattr(transformer, "pm_adapter_config", None)
    return cfg.num_domains if cfg is not None else 1


def _check_domain(transformer: nn.Module, domain: int) -> None:
    c = _num_domains(transformer)
    if not UNSEEN_DOMAIN <= domain < c:
        raise ValueError(f"domain {domain} out of range: expected -1 (unseen) or 0..{c - 1}")


def set_domains(transformer: nn.Module, domains: torch.Tensor | None) -> None:
    """Route each sample of the next forward(s) to its domain: LongTensor (B,), -1 = unseen; None = all unseen.

    The state persists until changed (so a backward pass with gradient checkpointing recomputes
    with the same routing). A no-op for the plain ``lora`` kind beyond validation.
    """
    layers = _domain_layers(transformer)
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
    layers = _domain_layers(transformer)
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
    """Inside: the exact base model (the alignment teacher). Leaves requires_grad untouched.

    peft's ``enable_adapters(False)`` would also set requires_grad=False on the adapters, which
    breaks DDP/FSDP bookkeeping mid-step, so only the layers' disable flag is flipped. A merged
    model is unmerged inside and merged again (same domain) on exit.
    """
    merged = getattr(transformer, "pm_merged_domain", None)
    if merged is not None:
        unmerge_adapters(transformer)
    layers = list(tuner_layers(transformer))
    flags = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, flags):
            layer._disable_adapters = flag
        if merged is not None:
            merge_adapters(transformer, merged)


def merge_adapters(transformer: nn.Module, domain: int) -> None:
    """Fold one domain's adapter into the base weights (peft merge); a previous merge is undone first.

    While merged, the forward ignores the routing and gives that domain's output for every sample.
    """
    _check_domain(transformer, domain)
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


# ---------------------------------------------------------------- losses and state


def mask_l1(transformer: nn.Module) -> torch.Tensor:
    """Mean |gate| over every learnable gate entry (0 for the other kinds); the caller weights it."""
    gates = {id(g): g for layer in _domain_layers(transformer) for g in getattr(layer, "lora_gate", {}).values()}
    total = sum(g.numel() for g in gates.values())
    if total == 0:
        p = next(iter(adapter_parameters(transformer)), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return sum(g.abs().sum() for g in gates.values()) / total


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
    lora_alpha = r (diffusers' default when a file carries no alpha). Tied A are written per module.
    """
    _check_domain(transformer, domain)
    out = {}
    with torch.no_grad():
        for name, layer in named_tuner_layers(transformer):
            for adapter in layer.lora_A:
                A = layer.lora_A[adapter].weight  # (r, k)
                is_domain = isinstance(layer, DomainLoraLinear)
                B = layer.domain_B(adapter, domain) if is_domain else layer.lora_B[adapter].weight  # (d, r)
                if fold_scale:
                    B = B * layer.scaling[adapter]
                out[f"{name}.lora_A.weight"] = A.detach().clone().contiguous()
                out[f"{name}.lora_B.weight"] = B.detach().clone().contiguous()
    return out
