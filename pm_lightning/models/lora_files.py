"""LoRA files in diffusers format: per-domain export, reading a training checkpoint's adapters, fusing a file.

The exported file holds ``transformer.<module>.lora_A.weight`` (r, k) and ``transformer.<module>.lora_B.weight``
(d, r) for every adapted Linear, no alphas: the alpha / r scale is folded into B, so diffusers'
default (alpha = r, scale 1) reproduces the trained output exactly. Per kind:
masked -> B diag(m_domain) (the domain's gates folded into B); asymmetric -> A with B_domain;
lora -> A, B. A shared A (``fused_qkv``) is written once per module. Domain index -1 (``unseen``)
exports the domain-free LoRA: the unseen mask (``adapter.unseen_mask``) / mean of the Bs.

Checkpoint contract (written by the stage modules, a Lightning checkpoint):

* ``ckpt["state_dict"]``: the adapter tensors only, keyed ``backbone.transformer.<adapter key>`` (what
  the stage modules write), ``model.transformer.<adapter key>`` or ``transformer.<adapter key>``, where
  ``<adapter key>`` is the module state-dict key with or without peft's adapter name
  (``...to_q.lora_A.default.weight`` or ``...to_q.lora_A.weight``; masked gates ``...lora_gate[.default]``).
  Other keys (no such prefix, or not adapter tensors) are ignored.
* ``ckpt["hyper_parameters"]["adapter"]``: a dict of ``AdapterConfig`` fields.
* ``ckpt["hyper_parameters"]["domains"]``: the domain names; their order gives the indices.
* ``ckpt["hyper_parameters"]["base"]``: the base model: a variant name (``VARIANTS``), a local
  diffusers pipeline directory or a hub id.

Only the transformer's shape is needed to read a checkpoint, so it is built on the ``meta`` device from
its config (no base weights are read); the adapters alone get real storage.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pm_lightning.core.atomic import atomic_path
from pm_lightning.core.errors import BadInput
from pm_lightning.data.domains import UNSEEN_DOMAIN
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_state import domain_lora_state_dict, load_adapter_state_dict
from pm_lightning.models.adapters import FROZEN_ADAPTER, add_adapters, materialize_adapters, tuner_layers
from pm_lightning.models.backbone import meta_transformer
from pm_lightning.models.kohya import diffusers_to_kohya, kohya_metadata
from pm_lightning.models.lora_names import SUFFIX, UNSEEN

PREFIXES = ("backbone.transformer.", "model.transformer.", "transformer.")
_ADAPTER_KEY = re.compile(r"\.lora_(A|B|gate)(\.default)?(\.weight)?$")


FORMATS = tuple(SUFFIX)  # ("diffusers", "kohya")


def export_domain_lora(
    transformer: nn.Module,
    domain: int,
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    fmt: str = "diffusers",
    domain_name: str = "",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `domain`'s adapter of `transformer` as a Flux LoRA file, atomically; returns the path.

    fmt "diffusers": diffusers' own writer (`FluxPipeline.save_lora_weights`); "kohya": sd-scripts keys with alphas
    (`models/kohya.py`), what ComfyUI / Forge / kohya tools read (and diffusers converts on load). `metadata` goes
    into the safetensors header next to the writer's own (`stage1_metadata`: the base a stage-2 LoRA needs)."""
    # lazy: diffusers, 16 s before export / style_lora read their flags (docs/ARCHITECTURE.md, "Start-up")
    from diffusers import FluxPipeline

    if fmt not in FORMATS:
        raise ValueError(f"unknown LoRA format {fmt!r}; choose from {FORMATS}")
    path = Path(path)
    sd = {k: v.to(dtype) for k, v in domain_lora_state_dict(transformer, domain).items()}
    with atomic_path(path) as tmp:
        if fmt == "diffusers":

            def save(weights, filename):  # diffusers' own writer, with our keys beside its {"format": "pt"}
                save_file(weights, filename, metadata={"format": "pt", **(metadata or {})})

            FluxPipeline.save_lora_weights(
                tmp.parent, transformer_lora_layers=sd, weight_name=tmp.name, save_function=save
            )
        else:
            rank = next(v.shape[0] for k, v in sd.items() if k.endswith("lora_A.weight"))
            header = {**kohya_metadata(rank, domain_name), **(metadata or {})}
            save_file(diffusers_to_kohya(sd, transformer), str(tmp), metadata=header)
    return path


STAGE1_KEY, STAGE1_SHA_KEY = "pm_lightning.stage1", "pm_lightning.stage1_sha256"


def stage1_metadata(hparams: dict) -> dict[str, str]:
    """The safetensors metadata of a stage-2 / ReCraft LoRA: the stage-1 file fused under it (path, sha256; "" for the
    plain base). Empty for a run with no `stage1` hyperparameter (a stage-1 run)."""
    from pm_lightning.core.paths import portable

    if "stage1" not in hparams:
        return {}
    stage1 = portable(hparams["stage1"]) if hparams.get("stage1") else ""
    return {STAGE1_KEY: stage1, STAGE1_SHA_KEY: str(hparams.get("stage1_sha256") or "")}


def read_stage1_metadata(path: str | Path) -> tuple[str, str] | None:
    """(stage-1 path, sha256) recorded in a LoRA file ("" = trained on the plain base); None when not recorded."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - not a safetensors file: load_lora_file reports it with the fix
        return None
    if STAGE1_KEY not in meta:
        return None
    return meta[STAGE1_KEY], meta.get(STAGE1_SHA_KEY, "")


def trusted_stage1(lora: str | Path, recorded: str, sha: str, option: str) -> Path:
    """The stage-1 file a LoRA's header names, used only when it is that file (its sha256 matches the header) and
    lies where this project put it: beside the LoRA, or under the runs folder (`./runs`, `<project>/runs`). A
    downloaded LoRA thus never makes us fuse some other local file. BadInput naming `option` otherwise."""
    from pm_lightning.core.paths import project_path

    lora = Path(lora).resolve()
    roots = [lora.parent, Path("runs").resolve(), project_path("runs").resolve()]
    candidates = dict.fromkeys(p for p in (Path(recorded), project_path(recorded), lora.parent / Path(recorded).name))
    seen = []
    for path in (p for p in candidates if p.is_file()):
        placed = any(path.resolve().parent == lora.parent or path.resolve().is_relative_to(r) for r in roots[1:])
        if placed and sha and file_sha256(path) == sha:
            return path
        seen.append(f"{path} ({'sha256 differs' if placed else 'outside the LoRA folder and runs/'})")
    found = f"; found {', '.join(seen)}" if seen else ", which is not here"
    raise BadInput(
        f"{Path(lora).name} records the stage-1 file {recorded!r} (sha256 {sha[:12] or 'not recorded'}){found}: "
        f"it is used only when it lies beside the LoRA or under runs/ with that sha256; give the stage-1 file "
        f"with {option} FILE"
    )


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
    if name == UNSEEN:
        return UNSEEN_DOMAIN
    if name not in domains:
        raise ValueError(f"unknown domain {name!r}; the checkpoint knows {domains} (or 'unseen')")
    return domains.index(name)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint read safely: tensors and plain data only (`weights_only=True`), never arbitrary pickled
    objects, so a downloaded file cannot run code. Raises ValueError naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} holds objects other than tensors and plain data, so it is refused unread ({first}); "
            "pm_lightning checkpoints never do: was it written by another program?"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def load_checkpoint_adapters(
    ckpt_path: str | Path, base: str | None = None
) -> tuple[nn.Module, AdapterConfig, list[str]]:
    """(meta transformer with the checkpoint's adapters loaded, its AdapterConfig, its domain list)."""
    ckpt = load_checkpoint(ckpt_path)
    hp = ckpt.get("hyper_parameters", {})
    missing = [k for k in ("adapter", "domains", "base") if k not in hp and not (k == "base" and base)]
    if missing:
        raise ValueError(f"{ckpt_path}: hyper_parameters lacks {missing} (see pm_lightning.export's docstring)")
    cfg = AdapterConfig.from_checkpoint(dict(hp["adapter"]))
    transformer = adapter_skeleton(base or hp["base"], cfg, adapter_tensors(ckpt["state_dict"]))
    return transformer, cfg, list(hp["domains"])


def adapter_skeleton(base: str, cfg: AdapterConfig, adapters: dict[str, torch.Tensor]) -> nn.Module:
    """`base`'s transformer on the meta device with real CPU adapters holding `adapters` (an adapter state dict):
    enough to export LoRA files without reading a base weight."""
    transformer = meta_transformer(base)
    with torch.device("meta"):
        add_adapters(transformer, cfg)
    materialize_adapters(transformer, "cpu")
    load_adapter_state_dict(transformer, adapters)
    return transformer


STAGE1_FIX = (
    "run `make train-stage1` first (it writes runs/tiny/lora/final/unseen.safetensors), "
    "or set model.init_args.stage1: null to start from the plain base"
)


def check_stage1_file(path: str | Path) -> Path:
    """The stage-1 LoRA file, or FileNotFoundError naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stage-1 LoRA file {str(path)!r} (model.init_args.stage1) not found: {STAGE1_FIX}")
    return path


def file_sha256(path: str | Path) -> str:
    """Content hash of a file (provenance of the fused stage-1 weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def quiet_diffusers():
    """Hide "no LoRA keys for CLIPTextModel": expected, the files are transformer-only."""
    # lazy: diffusers, 16 s before export / style_lora read their flags (docs/ARCHITECTURE.md, "Start-up")
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


def load_lora_file(pipe, path: str | Path, adapter_name: str, role: str = "LoRA file") -> None:
    """`pipe.load_lora_weights(path)` with a clear BadInput for a file that is missing, not safetensors (a pickle
    is never opened), holds no LoRA tensors, or does not fit the pipeline's transformer (another base or width)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{role} {path} not found")
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for any non-safetensors file
        raise BadInput(
            f"{role} {path} is not a safetensors file ({type(err).__name__}: {err}); LoRA files are .safetensors "
            "(pickled .bin / .pt files are never loaded)"
        ) from None
    if not any("lora" in k for k in keys):
        raise BadInput(f"{role} {path} holds no LoRA tensors (keys such as {keys[:3]})")
    try:
        with quiet_diffusers():
            pipe.load_lora_weights(str(path), adapter_name=adapter_name)
    except Exception as err:  # noqa: BLE001 - diffusers / peft raise ValueError, RuntimeError, KeyError...
        raise BadInput(
            f"{role} {path} does not fit this base model ({type(err).__name__}: {str(err).strip().splitlines()[0][:300]}): "
            "was it trained on another base?"
        ) from None


def load_frozen_lora_file(backbone, path: str | Path) -> None:
    """Load a diffusers-format Flux LoRA file into the transformer as a frozen, unmerged peft adapter named
    `FROZEN_ADAPTER` (diffusers' `load_lora_weights`; `add_adapters` then trains a plain LoRA beside it, both active).

    The base weights are never written, so a memory-mapped base stays clean pages shared by every process that maps
    the file, and under FSDP2 the adapter's frozen weights are sharded with their block. Must run before any other
    adapter is injected."""
    if any(True for _ in tuner_layers(backbone.transformer)):
        raise ValueError("load the frozen LoRA file before adding adapters")
    load_lora_file(backbone.pipeline(), check_stage1_file(path), FROZEN_ADAPTER, role="stage-1 LoRA file")
    backbone.requires_grad_(False)


def fuse_lora_file(backbone, path: str | Path, adapter_name: str = "stage1", scale: float = 1.0) -> None:
    """Fold a diffusers-format Flux LoRA file into the transformer's base weights (diffusers' load + fuse + unload).

    Must run before any adapter is injected: unloading removes every peft layer of the transformer.
    """
    if any(True for _ in tuner_layers(backbone.transformer)):
        raise ValueError("fuse LoRA files before adding adapters (diffusers' unload would remove them)")
    pipe = backbone.pipeline()
    load_lora_file(pipe, check_stage1_file(path), adapter_name, role="stage-1 LoRA file")
    with quiet_diffusers():
        pipe.fuse_lora(lora_scale=scale, adapter_names=[adapter_name])
        pipe.unload_lora_weights()
    backbone.requires_grad_(False)
