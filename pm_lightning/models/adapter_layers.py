"""peft LoRA layers with per-sample domain routing: masked (ProcessMaker) and asymmetric (MakeAnything).

Both subclass peft's ``lora.Linear`` (so peft's module walking, ``merged``/``merge``/``unmerge``,
``disable_adapters``, ``set_adapter`` and ``get_peft_model_state_dict`` keep working) and add only
what the methods add: the domain of each sample and the per-domain part of the update.

* ``MaskedLoraLinear``: delta W_c = B diag(m_c) A. ``lora_gate[adapter]`` (num_domains, g) holds the
  learnable parameters of the first g rank rows' gates (``gates="unbounded"``: the gates themselves;
  ``"sigmoid"``: their logits, so every gate lies in (0, 1)); the other r - g rows are fixed at 1
  (constants, not parameters). The unseen domain (-1) uses the all-ones mask (``unseen_mask="ones"``),
  the gated rows off (``"shared"``) or the mean of the domain gates (``"mean"``).
* ``AsymmetricLoraLinear``: delta W_c = B_c A. ``lora_B[adapter].weight`` is (num_domains, d, r);
  the unseen domain (-1) uses the mean of the domain Bs.

The domains are module state (``layer.domains``: LongTensor (B,) or None = every sample unseen, routed
exactly as a batch of -1),
set before the forward by ``adapter_routing.set_domains``; nothing travels through ``forward``, so
recomputation under gradient checkpointing sees the same routing.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.lora.layer import LoraLayer
from torch import nn

UNSEEN = -1
GATE_KINDS = ("unbounded", "sigmoid")
UNSEEN_MASKS = ("ones", "shared", "mean")
SIGMOID_INIT_LOGIT = 3.0  # sigmoid gates start on: sigmoid(3) = 0.953


class DomainLoraLinear(PeftLoraLinear):
    """peft LoRA Linear whose update depends on each sample's domain (abstract: see subclasses)."""

    def update_layer(
        self, adapter_name: str, r: int, lora_alpha: float, config, num_domains: int = 1, **kwargs
    ) -> None:
        self.num_domains = num_domains
        self.domains: torch.Tensor | None = None  # (B,) long, -1 = unseen; None = all unseen
        self.merge_domain: int = UNSEEN  # the domain that merge()/unmerge() fold in
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
        self._add_domain_params(adapter_name, r)

    def _add_domain_params(self, adapter_name: str, r: int) -> None:
        raise NotImplementedError

    def _routed_update(self, adapter: str, h: torch.Tensor) -> torch.Tensor:
        """(B, ..., r) rank activations -> (B, ..., d) per-sample update (unscaled)."""
        raise NotImplementedError

    def domain_B(self, adapter: str, domain: int) -> torch.Tensor:
        """(d, r) plain-LoRA B of one domain (gates folded in), unscaled."""
        raise NotImplementedError

    def _check_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The domains as a (B,) tensor on x's device; None (every sample unseen) becomes B times -1."""
        if self.domains is None:
            return torch.full((x.shape[0],), UNSEEN, dtype=torch.long, device=x.device)  # (B,)
        if self.domains.shape[0] != x.shape[0]:
            raise ValueError(f"set_domains got {self.domains.shape[0]} domains for a batch of {x.shape[0]} samples")
        return self.domains.to(x.device)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        B = self.domain_B(adapter, self.merge_domain)  # (d, r)
        A = self.lora_A[adapter].weight  # (r, k)
        return (B.float() @ A.float()).to(A.dtype) * self.scaling[adapter]  # (d, k)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)  # (B, ..., d)
        if self.merged:
            return result
        out_dtype = result.dtype
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            xa = self._cast_input_dtype(x, self.lora_A[adapter].weight.dtype)
            h = self.lora_A[adapter](self.lora_dropout[adapter](xa))  # (B, ..., r)
            result = result + self._routed_update(adapter, h) * self.scaling[adapter]  # (B, ..., d)
        return result.to(out_dtype)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, r) -> (B, 1, ..., 1, r) broadcastable against `like` (B, ..., r)."""
    return v.view(v.shape[0], *([1] * (like.dim() - 2)), v.shape[-1])


class MaskedLoraLinear(DomainLoraLinear):
    """ProcessMaker masked LoRA: delta W_c = B diag(m_c) A with learnable gates on the first rows."""

    adapter_layer_names = LoraLayer.adapter_layer_names + ("lora_gate",)

    def update_layer(
        self, adapter_name: str, r: int, lora_alpha: float, config, num_gated: int = 0, gates: str = "unbounded",
        unseen_mask: str = "ones", **kwargs,
    ) -> None:  # fmt: skip
        if gates not in GATE_KINDS or unseen_mask not in UNSEEN_MASKS:
            raise ValueError(f"gates must be one of {GATE_KINDS} and unseen_mask one of {UNSEEN_MASKS}")
        self.num_gated, self.gates, self.unseen_mask = num_gated, gates, unseen_mask
        if not hasattr(self, "lora_gate"):
            self.lora_gate = nn.ParameterDict({})  # must exist before peft's set_adapter walks adapter_layer_names
        super().update_layer(adapter_name, r, lora_alpha, config, **kwargs)

    def _add_domain_params(self, adapter_name: str, r: int) -> None:
        device = self.lora_A[adapter_name].weight.device
        init = 1.0 if self.gates == "unbounded" else SIGMOID_INIT_LOGIT
        self.lora_gate[adapter_name] = nn.Parameter(torch.full((self.num_domains, self.num_gated), init, device=device))

    def gate_values(self, adapter: str) -> torch.Tensor:
        """(num_domains, g) the gates of the gated rows: the parameters (unbounded) or their sigmoid (in (0, 1))."""
        gate = self.lora_gate[adapter]  # (C, g)
        return gate if self.gates == "unbounded" else torch.sigmoid(gate)  # (C, g)

    def mask_table(self, adapter: str) -> torch.Tensor:
        """(num_domains + 1, r) masks; the last row is the unseen mask, so index -1 selects it: all ones ("mask
        removed", the default), the gated rows 0 ("shared") or the mean of the domain masks ("mean")."""
        gate = self.gate_values(adapter)  # (C, g)
        g, r = gate.shape[1], self.r[adapter]
        shared = torch.ones(gate.shape[0], r - g, device=gate.device, dtype=gate.dtype)  # (C, r-g)
        domains = torch.cat([gate, shared], dim=1)  # (C, r)
        if self.unseen_mask == "mean":
            unseen = domains.mean(0, keepdim=True)  # (1, r)
        else:
            unseen = torch.ones(1, r, device=gate.device, dtype=gate.dtype)  # (1, r)
            if self.unseen_mask == "shared":
                unseen[:, :g] = 0.0  # the domain rows off
        return torch.cat([domains, unseen], dim=0)  # (C+1, r)

    def _routed_update(self, adapter: str, h: torch.Tensor) -> torch.Tensor:
        m = self.mask_table(adapter)[self._check_batch(h)].to(h.dtype)  # (B, r)
        return self.lora_B[adapter](h * _per_sample(m, h))  # (B, ..., d)

    def domain_B(self, adapter: str, domain: int) -> torch.Tensor:
        m = self.mask_table(adapter)[domain]  # (r,)
        return self.lora_B[adapter].weight * m.to(self.lora_B[adapter].weight.dtype)  # (d, r)


class DomainB(nn.Module):
    """One B per domain: weight (num_domains, d, r), zero-initialised like peft's B."""

    def __init__(self, num_domains: int, r: int, out_features: int, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_domains, out_features, r, device=device))

    def table(self) -> torch.Tensor:
        """(num_domains + 1, d, r): the domain Bs and, last (index -1), their mean for unseen domains."""
        return torch.cat([self.weight, self.weight.mean(0, keepdim=True)], dim=0)

    def extra_repr(self) -> str:
        c, d, r = self.weight.shape
        return f"domains={c}, in_features={r}, out_features={d}"


class AsymmetricLoraLinear(DomainLoraLinear):
    """MakeAnything asymmetric LoRA: shared A, one B per domain (mean of the Bs for unseen)."""

    def _add_domain_params(self, adapter_name: str, r: int) -> None:
        device = self.lora_B[adapter_name].weight.device
        self.lora_B[adapter_name] = DomainB(self.num_domains, r, self.out_features, device=device)

    def _routed_update(self, adapter: str, h: torch.Tensor) -> torch.Tensor:
        Bs = self.lora_B[adapter].table().to(h.dtype)[self._check_batch(h)]  # (B, d, r)
        flat = h.reshape(h.shape[0], -1, h.shape[-1])  # (B, N, r)
        out = torch.bmm(flat, Bs.transpose(1, 2))  # (B, N, d)
        return out.reshape(*h.shape[:-1], Bs.shape[1])  # (B, ..., d)

    def domain_B(self, adapter: str, domain: int) -> torch.Tensor:
        return self.lora_B[adapter].table()[domain]  # (d, r)
