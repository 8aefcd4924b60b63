"""Per-domain LoRA export in diffusers format (what ``FluxPipeline.save_lora_weights`` writes).

    python -m pm_lightning.export --ckpt runs/x/checkpoints/last.ckpt --domain lego --out lego.safetensors
    python -m pm_lightning.export --ckpt last.ckpt --domain unseen --out generic.safetensors

The file holds ``transformer.<module>.lora_A.weight`` (r, k) and ``transformer.<module>.lora_B.weight``
(d, r) for every adapted Linear, no alphas: the alpha / r scale is folded into B, so diffusers'
default (alpha = r, scale 1) reproduces the trained output exactly. Per kind:
masked -> B diag(m_domain) (the domain's gates folded into B); asymmetric -> A with B_domain;
lora -> A, B. A shared A (``fused_qkv``) is written once per module. ``--domain unseen`` (index -1)
exports the domain-free LoRA: all-ones mask / mean of the Bs.

Checkpoint contract (written by the Stage-1 module, a Lightning checkpoint):

* ``ckpt["state_dict"]``: the adapter tensors only, keyed ``backbone.transformer.<adapter key>`` (what
  ``Stage1Module`` writes), ``model.transformer.<adapter key>`` or ``transformer.<adapter key>``, where ``<adapter key>`` is the module state-dict key with or
  without peft's adapter name (``...to_q.lora_A.default.weight`` or ``...to_q.lora_A.weight``;
  masked gates ``...lora_gate[.default]``). Other keys (no such prefix, or not adapter tensors) are ignored.
* ``ckpt["hyper_parameters"]["adapter"]``: a dict of ``AdapterConfig`` fields.
* ``ckpt["hyper_parameters"]["domains"]``: the domain names; their order gives the indices.
* ``ckpt["hyper_parameters"]["base"]``: the base model: a variant name (``VARIANTS``), a local
  diffusers pipeline directory or a hub id (overridable with ``--base``).

Only the transformer's shape is needed, so it is built on the ``meta`` device from its config
(no base weights are read); the adapters alone get real storage.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch import nn

from pm_lightning.data.domains import UNSEEN_DOMAIN
from pm_lightning.models.adapters import (
    AdapterConfig,
    add_adapters,
    domain_lora_state_dict,
    load_adapter_state_dict,
    materialize_adapters,
)
from pm_lightning.models.variants import VARIANTS

PREFIXES = ("backbone.transformer.", "model.transformer.", "transformer.")
_ADAPTER_KEY = re.compile(r"\.lora_(A|B|gate)(\.default)?(\.weight)?$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_domain_lora(transformer: nn.Module, domain: int, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `domain`'s adapter of `transformer` as a diffusers Flux LoRA file; returns the path."""
    from diffusers import FluxPipeline

    path = Path(path)
    sd = {k: v.to(dtype) for k, v in domain_lora_state_dict(transformer, domain).items()}
    FluxPipeline.save_lora_weights(path.parent, transformer_lora_layers=sd, weight_name=path.name)
    return path


def transformer_skeleton(base: str) -> nn.Module:
    """The base FluxTransformer2DModel on the meta device, from a variant name, pipeline directory or hub id."""
    from diffusers import FluxTransformer2DModel

    variant = VARIANTS.get(base)
    if variant is not None and variant.transformer_config is not None:
        config = variant.transformer_config
    else:
        source = variant.source if variant is not None else base
        config = FluxTransformer2DModel.load_config(source, subfolder="transformer")
    with torch.device("meta"):
        return FluxTransformer2DModel.from_config(config)


def adapter_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter entries of a checkpoint state dict, with the transformer prefix removed."""
    out = {}
    for key, value in state_dict.items():
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is not None and _ADAPTER_KEY.search(key):
            out[key[len(prefix) :]] = value
    return out


def domain_index_of(name: str, domains: list[str]) -> int:
    """Index of `name` in the checkpoint's domain list; "unseen" -> -1; anything else is an error."""
    if name == "unseen":
        return UNSEEN_DOMAIN
    if name not in domains:
        raise SystemExit(f"unknown domain {name!r}; the checkpoint knows {domains} (or 'unseen')")
    return domains.index(name)


def load_checkpoint_adapters(ckpt_path: str | Path, base: str | None = None) -> tuple[nn.Module, AdapterConfig, list[str]]:
    """(meta transformer with the checkpoint's adapters loaded, its AdapterConfig, its domain list)."""
    # A trusted local checkpoint: Lightning stores hyper-parameters as plain Python objects.
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters", {})
    missing = [k for k in ("adapter", "domains", "base") if k not in hp and not (k == "base" and base)]
    if missing:
        raise SystemExit(f"{ckpt_path}: hyper_parameters lacks {missing} (see pm_lightning.export's docstring)")
    cfg = AdapterConfig.from_dict(dict(hp["adapter"]))
    transformer = transformer_skeleton(base or hp["base"])
    with torch.device("meta"):
        add_adapters(transformer, cfg)
    materialize_adapters(transformer, "cpu")
    load_adapter_state_dict(transformer, adapter_tensors(ckpt["state_dict"]))
    return transformer, cfg, list(hp["domains"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pm_lightning.export", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint of a stage-1 run")
    p.add_argument("--domain", required=True, help="domain name from the checkpoint's list, or 'unseen'")
    p.add_argument("--out", required=True, help="output FILE.safetensors")
    p.add_argument("--base", default=None, help="override hyper_parameters['base'] (variant, directory or hub id)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of the written tensors")
    args = p.parse_args(argv)
    transformer, cfg, domains = load_checkpoint_adapters(args.ckpt, args.base)
    path = export_domain_lora(transformer, domain_index_of(args.domain, domains), args.out, DTYPES[args.dtype])
    print(f"wrote {path} ({cfg.kind} adapter, domain {args.domain!r}, rank {cfg.rank})")


if __name__ == "__main__":
    main()
