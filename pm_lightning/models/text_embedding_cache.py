"""The text embedding cache: `<dir>/<encoder id>/<sha256(caption)>.safetensors` ({"prompt_embeds": (T, D), "pooled": (P,)}).

The encoder id is a hash of the base, the T5 length and the dtype, so two sets of text encoders never share entries.
`FluxBackbone.encode_text` reads and fills it (`models/backbone.py`); `python -m pm_lightning.text_cache` fills it ahead
of a run (`models/text_embeddings.py`); a run with `model.init_args.text_cache_dir` pointing at it reads these files,
and with `text_cache_only: true` never loads T5-XXL / CLIP at all. Beside it: the VAE latent cache (`vae_latents.py`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pm_lightning.core.atomic import atomic_path
from pm_lightning.core.dtypes import dtype_name

log = logging.getLogger(__name__)


def caption_key(caption: str) -> str:
    """Cache key of a caption: a hash of its text and nothing else."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


class MissingTextEmbeddings(KeyError):
    """A caption is not in the text cache and the text encoders were not loaded (`text_cache_only`)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TextEmbeddingCache:
    """Text embeddings of one set of text encoders (base, T5 length, dtype), one file per caption, under `root`."""

    def __init__(self, root: str | Path, source: str, max_sequence_length: int, dtype: torch.dtype):
        self.root, self.source, self.max_sequence_length, self.dtype = Path(root), source, max_sequence_length, dtype

    @property
    def folder(self) -> Path:
        """Per-encoder subfolder, so two backbones never share entries; files inside are keyed by caption only."""
        # str(dtype) ("torch.bfloat16"), not dtype_name: the id format the existing caches were written with
        ident = f"{self.source}|{self.max_sequence_length}|{self.dtype}|{self.dtype}"
        return self.root / hashlib.sha256(ident.encode()).hexdigest()[:16]

    def path(self, caption: str) -> Path:
        return self.folder / f"{caption_key(caption)}.safetensors"

    def load(self, paths) -> dict[Path, dict[str, torch.Tensor]]:
        """The entries of `paths` that are there and readable; a damaged entry is left out (encoded again), never fatal."""
        found = {}
        for path in paths:
            if path.is_file():
                try:
                    found[path] = load_file(path)
                except Exception as err:  # noqa: BLE001 - a damaged entry is re-encoded, never fatal
                    log.warning("text cache entry %s is unreadable (%s): encoding the caption again", path, err)
        return found

    def save(self, caption: str, embeds: torch.Tensor, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """Write one caption's (T, D) embeddings and (P,) pooled vector (atomic); a full disk costs the cache only."""
        entry = {"prompt_embeds": embeds.cpu().contiguous(), "pooled": pooled.cpu().contiguous()}
        try:  # atomic: concurrent workers never read half a file
            with atomic_path(self.path(caption)) as tmp:
                save_file(entry, tmp, metadata={"caption": caption})
        except OSError as err:  # a full disk costs the cache, not the run
            log.warning("text cache: %s; continuing without caching this caption", err)
        return entry

    def missing_error(self, missing: list[str]) -> MissingTextEmbeddings:
        """The error for captions not cached while the text encoders are not loaded, with the command that fills it."""
        return MissingTextEmbeddings(
            f"{len(missing)} caption(s) not in the text cache {self.folder} and the text encoders are not loaded "
            f"(text_cache_only), e.g. {missing[0]!r}. Precompute them: python -m pm_lightning.text_cache "
            f"--shards <the training shards> --base {self.source} --dtype {dtype_name(self.dtype)} "
            f"--max-sequence-length {self.max_sequence_length} --out {self.root}"
        )
