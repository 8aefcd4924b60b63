"""A checkpoint's LoRA files as a folder ready for the Hub: the files (diffusers or kohya format), a model card and
the run's sample grid; and the upload of such a folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pm_lightning.models.lora_files import (
    domain_index_of,
    export_domain_lora,
    load_checkpoint,
    load_checkpoint_adapters,
    stage1_metadata,
)
from pm_lightning.models.model_card import latest_samples, write_model_card

SUFFIX = {"diffusers": ".safetensors", "kohya": ".kohya.safetensors"}


def export_checkpoint(
    ckpt_path: str | Path,
    domains: list[str],
    out: str | Path,
    fmt: str = "diffusers",
    dtype: torch.dtype = torch.float32,
    base: str | None = None,
) -> tuple[Path, dict[str, str]]:
    """Export `domains` ("all": every domain and unseen) of a training checkpoint; returns (folder, {domain: file}).

    `out` is a file (`*.safetensors`, one domain) or a folder (`<domain><suffix>` per domain). The folder gets a
    `README.md` model card and the run's sample grid (`<run>/samples/`, the checkpoint's run directory)."""
    transformer, cfg, known = load_checkpoint_adapters(ckpt_path, base)
    ckpt = load_checkpoint(ckpt_path)
    hparams = dict(ckpt.get("hyper_parameters", {}))
    if base:
        hparams["base"] = base
    if domains == ["all"]:
        domains = ["lora"] if cfg.kind == "lora" else [*known, "unseen"]
    out = Path(out)
    single = out.suffix == ".safetensors"
    if single and len(domains) != 1:
        raise ValueError(f"--out {out} is one file, but {len(domains)} domains were asked for: give a folder")
    folder = out.parent if single else out
    files = {}
    for name in domains:
        index = 0 if name == "lora" and cfg.kind == "lora" else domain_index_of(name, known)
        path = out if single else folder / f"{name}{SUFFIX[fmt]}"
        export_domain_lora(transformer, index, path, dtype, fmt, domain_name=name, metadata=stage1_metadata(hparams))
        files[name] = path.name
    run_dir = Path(ckpt_path).resolve().parent.parent
    card_files = {name: domain for domain, name in files.items()}
    write_model_card(folder, hparams, card_files, ckpt.get("global_step"), latest_samples(run_dir), fmt)
    return folder, files


class PushFailed(RuntimeError):
    """The folder could not be uploaded; the message says why and what to do."""


def push_folder(folder: str | Path, repo: str, private: bool = True) -> str:
    """Upload `folder` to the Hub model repo `repo` (created when missing); returns its URL.

    Without credentials (no `HF_TOKEN`, no `hf auth login`) raises PushFailed saying how to log in, and how to upload
    the folder later by hand; network or permission errors also become PushFailed."""
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    if get_token() is None:
        raise PushFailed(
            f"no Hugging Face credentials: run `hf auth login` (or set HF_TOKEN to a token with write access), then "
            f"rerun with --push-to-hub {repo}; the folder {folder} is complete, so `hf upload {repo} {folder} .` "
            "uploads it as it is"
        )
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model")
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises HTTP, connection and validation errors
        raise PushFailed(
            f"uploading {folder} to {repo} failed ({type(err).__name__}: {str(err).strip().splitlines()[0][:300]}); "
            f"the folder is intact: retry, or `hf upload {repo} {folder} .`"
        ) from None
    return str(getattr(info, "commit_url", info))
