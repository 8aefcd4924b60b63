"""The names of a LoRA export, one rule each: which files an export writes, and which of them serves a domain.

An export of a domain-routed adapter (masked, asymmetric) writes one file per trained domain plus `unseen` (the
domain-free LoRA: all-ones mask / mean of the Bs); the plain kind writes one `lora` file. A domain is served by its
own file, else by `unseen`, else by `lora`. The exporters (training/callbacks/lora_export.py, models/publish.py) and
the readers (demo/backend.py, ablation/row_eval.py, inference/tiny_defaults.py) all ask here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pm_lightning.core.errors import BadInput
from pm_lightning.data.domains import UNSEEN_DOMAIN

UNSEEN = "unseen"  # the domain-free file of a domain-routed adapter
PLAIN = "lora"  # the one file of the plain kind
DOMAIN_FREE = (UNSEEN, PLAIN)
SUFFIX = {"diffusers": ".safetensors", "kohya": ".kohya.safetensors"}  # file name = <name><suffix>


def export_names(kind: str, domains: list[str]) -> dict[str, int]:
    """{name: domain index} of a whole export: `lora` -> 0 for the plain kind; else every domain (its position in
    `domains`) and `unseen` -> UNSEEN_DOMAIN."""
    if kind == "lora":
        return {PLAIN: 0}
    return {**{name: i for i, name in enumerate(domains)}, UNSEEN: UNSEEN_DOMAIN}


def candidates(domain: str | None) -> list[str]:
    """The names that may serve `domain`, in order: the domain's own, `unseen`, `lora`."""
    return [n for n in (domain, UNSEEN, PLAIN) if n is not None]


def served_name(domain: str | None, names: Iterable[str]) -> str | None:
    """The name among `names` (an export's, e.g. `export_names`) that serves `domain`; None if none does."""
    names = set(names)
    return next((n for n in candidates(domain) if n in names), None)


def lora_file_for(folder: str | Path, domain: str | None, fmt: str = "diffusers") -> Path:
    """The file in the export folder `folder` that serves `domain` (the first of `candidates` that is there);
    BadInput naming the folder and the files tried when none is."""
    folder = Path(folder)
    tried = [folder / f"{n}{SUFFIX[fmt]}" for n in candidates(domain)]
    for path in tried:
        if path.is_file():
            return path
    raise BadInput(
        f"{folder} holds no LoRA file for domain {domain!r} (tried {', '.join(p.name for p in tried)}): give the "
        "export folder of a stage-1 run (`<run>/lora/final`, written by LoraExport or `python -m pm_lightning.export`)"
    )
