"""Which adapter, where, and how big: `AdapterConfig` and the adapter kinds.

One LoRA (A: r x k, B: d x r, scale alpha / r) on each target Linear, injected by peft (`models/adapters.py`):

* ``lora``        delta W = B A (stock peft ``lora.Linear``).
* ``asymmetric``  delta W_c = B_c A: shared A, one B per domain c (``AsymmetricLoraLinear``).
* ``masked``      delta W_c = B diag(m_c) A (``MaskedLoraLinear``): the first g = round(rho * r) rank
  rows carry a learnable gate per domain (``gates``: ``sigmoid`` gates in (0, 1) initialised on, the default, or
  ``unbounded`` reals initialised to 1; ``mask_l1`` weights the mean |gate| as a sparsity pull towards 0); the other
  r - g rows are shared, fixed at 1 for every domain and are not parameters.

`ADAPTER_KINDS` is the one list of kinds: name -> peft layer class (+ the layer's extra arguments). `AdapterConfig.kind`
accepts its keys (the Literal is built from them) and `add_adapters` injects its layer; adding a kind is one layer
class in `models/adapter_layers.py` and one row here (docs/ARCHITECTURE.md, "Adding things").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

from pm_lightning.core.validate import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt
from pm_lightning.models.adapter_layers import GATE_KINDS, UNSEEN_MASKS, AsymmetricLoraLinear, MaskedLoraLinear


@dataclass
class AdapterConfig:
    """Which adapter, where, and how big."""

    kind: Literal[KINDS] = "masked"  # the keys of ADAPTER_KINDS (below); LightningCLI lists them as the choices
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
    mask_l1: NonNegativeFloat = 0.03
    """Weight of the L1 pull of the gates towards 0 (applied by the training module to ``mask_l1()``): the paper's
    "sparse mask". 0.03 x the mean gate (0.95 at the start) is about a tenth of the tiny Flux's flow-matching loss
    (docs/PARAMS.md, the masked gates' table)."""
    gates: Literal[GATE_KINDS] = "sigmoid"
    """masked: how the gate parameters become gates. "sigmoid" (the default): gate = sigmoid(parameter), a mask
    bounded in (0, 1), initialised on (sigmoid(3) = 0.95); "unbounded": the parameters are the gates (real,
    initialised to 1; the default before 2026-12-04, and what a checkpoint without a ``gates`` setting was trained
    with: ``from_checkpoint``)."""
    unseen_mask: Literal[UNSEEN_MASKS] = "ones"
    """masked: the gates of an unseen domain. "ones": the mask removed (ProcessMaker, the default); "shared": the gated
    rows off, only the shared rows act; "mean": the mean of the trained domain gates (the masked analogue of
    MakeAnything's mean of the Bs)."""
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
        for key, allowed in (("gates", GATE_KINDS), ("unseen_mask", UNSEEN_MASKS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"AdapterConfig.{key} must be one of {allowed}, got {getattr(self, key)!r}")
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

    @classmethod
    def from_checkpoint(cls, d: dict) -> AdapterConfig:
        """Build from a checkpoint's saved adapter settings: a setting the checkpoint predates means what it meant
        when it was written (``CHECKPOINT_DEFAULTS``), not today's default."""
        return cls.from_dict({**CHECKPOINT_DEFAULTS, **d})


CHECKPOINT_DEFAULTS = {"gates": "unbounded", "mask_l1": 0.0}
"""Settings added after checkpoints were written, at the value those checkpoints were trained with."""


@dataclass(frozen=True)
class AdapterKind:
    """One adapter kind: its peft layer class (None: stock peft ``lora.Linear``) and that layer's extra arguments."""

    layer: type | None
    layer_args: Callable[[AdapterConfig], dict] = lambda cfg: {}


ADAPTER_KINDS: dict[str, AdapterKind] = {
    "lora": AdapterKind(None),
    "asymmetric": AdapterKind(AsymmetricLoraLinear, lambda cfg: {"num_domains": cfg.num_domains}),
    "masked": AdapterKind(
        MaskedLoraLinear,
        lambda cfg: {
            "num_domains": cfg.num_domains,
            "num_gated": cfg.num_gated,
            "gates": cfg.gates,
            "unseen_mask": cfg.unseen_mask,
        },
    ),
}
KINDS = tuple(ADAPTER_KINDS)
