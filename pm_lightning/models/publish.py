"""A checkpoint's LoRA files as a folder ready for the Hub: the files (diffusers or kohya format), a model card and
the run's sample grid; and the upload of such a folder, limited to what the exports wrote (`models/export_files.py`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pm_lightning.core.run_layout import RunDir
from pm_lightning.models.export_files import ExportFiles, upload_allow_list
from pm_lightning.models.lora_files import (
    domain_index_of,
    export_domain_lora,
    load_checkpoint,
    load_checkpoint_adapters,
    stage1_metadata,
)
from pm_lightning.models.lora_names import PLAIN, SUFFIX, export_names
from pm_lightning.models.model_card import write_model_card


def export_checkpoint(
    ckpt_path: str | Path,
    domains: list[str],
    out: str | Path,
    fmt: str = "diffusers",
    dtype: torch.dtype = torch.float32,
    base: str | None = None,
) -> tuple[ExportFiles, dict[str, str]]:
    """Export `domains` ("all": every domain and unseen) of a training checkpoint; returns (what was written,
    {domain: file name}).

    `out` is a file (`*.safetensors`, one domain; its card is `<stem>.README.md` beside it) or a folder
    (`<domain><suffix>` per domain, `README.md`, `images/samples.png`: the run's sample grid, from the checkpoint's
    run directory). Everything is checked before the first byte is written: the domain names, and that no file
    this export did not write would be replaced (ValueError naming them)."""
    transformer, cfg, known = load_checkpoint_adapters(ckpt_path, base)
    ckpt = load_checkpoint(ckpt_path)
    hparams = dict(ckpt.get("hyper_parameters", {}))
    if base:
        hparams["base"] = base
    if domains == ["all"]:
        indexes = export_names(cfg.kind, known)
    else:
        indexes = {n: 0 if n == PLAIN and cfg.kind == "lora" else domain_index_of(n, known) for n in domains}
    domains = list(indexes)
    plan = ExportFiles.plan(Path(out), domains, SUFFIX[fmt])
    plan.check_replaceable()
    for name, index in indexes.items():
        path = plan.folder / plan.files[name]
        export_domain_lora(transformer, index, path, dtype, fmt, domain_name=name, metadata=stage1_metadata(hparams))
    card_files = {file: domain for domain, file in plan.files.items()}
    samples = RunDir.of_checkpoint(ckpt_path).latest_sample_sheet()
    write_model_card(plan.folder, hparams, card_files, ckpt.get("global_step"), samples, fmt, plan.card, plan.image)
    plan.record()
    return plan, plan.files


class PushFailed(RuntimeError):
    """The folder could not be uploaded; the message says why and what to do."""


def push_folder(folder: str | Path, repo: str, private: bool = True) -> str:
    """Upload what exports wrote into `folder` (the manifest's LoRA files, card and picture; nothing else that lies
    there) to the Hub model repo `repo` (created when missing); returns its URL.

    Without credentials (no `HF_TOKEN`, no `hf auth login`) raises PushFailed saying how to log in, and how to upload
    the files later by hand; network or permission errors also become PushFailed."""
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    files = upload_allow_list(folder)
    by_hand = f"`hf upload {repo} {folder} . --include {' '.join(files)}`"
    if not files:
        raise PushFailed(f"{folder} holds no files written by `python -m pm_lightning.export`: nothing to push")
    if get_token() is None:
        raise PushFailed(
            f"no Hugging Face credentials: run `hf auth login` (or set HF_TOKEN to a token with write access), then "
            f"rerun with --push-to-hub {repo}; the folder {folder} is complete, so {by_hand} uploads its files"
        )
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", allow_patterns=files)
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises HTTP, connection and validation errors
        raise PushFailed(
            f"uploading {folder} to {repo} failed ({type(err).__name__}: {str(err).strip().splitlines()[0][:300]}); "
            f"the folder is intact: retry, or {by_hand}"
        ) from None
    return str(getattr(info, "commit_url", info))
