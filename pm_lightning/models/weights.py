"""Where a Flux pipeline's weights are: a local diffusers directory, the Hugging Face cache, or the hub.

`local_root(source)` is the one path every loader takes (`models/backbone.py`): the directory itself, its cached hub
snapshot, or (online) a download of the pipeline's component folders. A missing model raises the one error,
`BackboneNotFoundError`, which says what was looked for and the three ways to provide it. The environment
(HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE) is read when called, not at import.
"""

from __future__ import annotations

import os
from pathlib import Path

from pm_lightning.models.variants import VARIANTS


class BackboneNotFoundError(FileNotFoundError):
    """The Flux backbone is neither a local directory nor in the Hugging Face cache / hub."""


COMPONENTS = ("scheduler", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae", "transformer")
_TRUE = {"1", "on", "yes", "true"}


def hf_cache_dir() -> str:
    """The hub cache, read from the environment now (huggingface_hub's constants are fixed at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return str(Path(home).expanduser() / "hub")


def hf_offline() -> bool:
    """HF_HUB_OFFLINE as set now."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def not_found_error(source: str, cause: BaseException | str | None = None) -> BackboneNotFoundError:
    """The one error for a missing model: what was looked for, and the three ways to provide it."""
    local = Path(source).expanduser().resolve()
    offline = " (HF_HUB_OFFLINE=1: no download attempted)" if hf_offline() else ""
    home = os.environ.get("HF_HOME", "unset")
    lines = [
        f"Flux backbone {source!r} not found.",
        f"  looked for a local directory: {local} (missing or not a diffusers pipeline: no model_index.json)",
        f"  looked for hub id {source!r} in the Hugging Face cache {hf_cache_dir()} (HF_HOME={home}){offline}",
    ]
    if cause is not None:
        text = str(cause).strip()
        lines.append(f"  cause: {type(cause).__name__}: {text.splitlines()[0] if text else ''}")
    lines += [
        "Provide it in one of three ways:",
        "  1. a local diffusers-format directory (model_index.json, transformer/, vae/, text_encoder/, "
        "text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/): pass its path as the backbone source;",
        "  2. the hub: `hf auth login` (accept the model licence on huggingface.co first), then "
        "`hf download black-forest-labs/FLUX.1-dev` into the cache (set HF_HOME to choose where);",
        f"  3. the embedded default: source 'tiny' = {VARIANTS['tiny'].location()} (rebuild it with `make tiny-base`).",
    ]
    return BackboneNotFoundError("\n".join(lines))


def resolve_source(source: str) -> str:
    """A local pipeline directory for `source` without downloading: the directory itself or its cached
    hub snapshot; else, online, `source` unchanged (a hub id still to download).

    Raises BackboneNotFoundError for an invalid hub id, or when offline (HF_HUB_OFFLINE=1) and not cached.
    """
    # lazy: snapshot_download loads huggingface_hub's HTTP stack, 0.6 s before tiny_base reads its flags (docs/ARCHITECTURE.md, "Start-up")
    from huggingface_hub import snapshot_download

    path = Path(source).expanduser()
    if (path / "model_index.json").is_file():
        return str(path)
    try:
        return snapshot_download(source, cache_dir=hf_cache_dir(), local_files_only=True)
    except ValueError as err:  # not a valid hub id either (e.g. a missing absolute path)
        raise not_found_error(source, err) from None
    except OSError as err:  # not in the cache
        if hf_offline():
            raise not_found_error(source, err) from None
    return source


def download_source(source: str) -> str:
    """Download (or complete in the cache) the pipeline's component folders of hub id `source`; fails fast."""
    # lazy: snapshot_download loads huggingface_hub's HTTP stack, 0.6 s before tiny_base reads its flags (docs/ARCHITECTURE.md, "Start-up")
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", *(f"{c}/*" for c in COMPONENTS)]
    try:
        return snapshot_download(source, cache_dir=hf_cache_dir(), allow_patterns=patterns)
    except (OSError, ValueError) as err:  # hub, HTTP and cache errors are OSErrors; a bad repo id a ValueError
        raise not_found_error(source, err) from None


def local_root(source: str) -> str:
    """The local directory to load `source` from: as given, from the cache when offline, else downloaded."""
    root = resolve_source(source)
    if (Path(root) / "model_index.json").is_file() or hf_offline():
        return root
    return download_source(source)
