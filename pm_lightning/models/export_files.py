"""What an export writes and what a push sends: the file names (domain names checked before they become names), a
manifest of the files the export wrote (with their sha256), and the upload allow-list read from it.

An export never replaces a file it did not write itself: a target that exists is replaced only when the manifest
lists it unchanged (or it is the one file `--out` names); anything else is refused, naming the files. A single-file
export keeps its card and picture beside the file (`<stem>.README.md`, `<stem>.samples.png`), never `README.md`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pm_lightning.core.atomic import atomic_path

MANIFEST = ".pm_export.json"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*(\.[A-Za-z0-9_+-]+)*")  # no separators, no "..", no leading dot


def check_domain_names(names: list[str]) -> None:
    """Domain names (from a checkpoint) that become file names must be plain names: no path separators, no `..`,
    nothing absolute, at most 100 characters; ValueError naming the bad ones."""
    bad = [n for n in names if len(n) > 100 or not SAFE_NAME.fullmatch(n)]
    if bad:
        raise ValueError(
            f"the checkpoint's domain list holds {bad}, which are not plain file names (letters, digits, _ - + and "
            "single dots): export such a domain alone with --out FILE.safetensors"
        )


@dataclass
class ExportFiles:
    """Where one export writes: `folder`, {domain: file name}, the card's and the picture's names in the folder."""

    folder: Path
    files: dict[str, str]
    card: str
    image: str
    named: str | None = None  # the file --out names (a single-file export): replacing it is what the user asked

    @classmethod
    def plan(cls, out: Path, domains: list[str], suffix: str) -> ExportFiles:
        """`out` a `*.safetensors` file (one domain) or a folder (one file per domain, README.md, images/)."""
        if out.suffix == ".safetensors":
            if len(domains) != 1:
                raise ValueError(f"--out {out} is one file, but {len(domains)} domains were asked for: give a folder")
            stem = out.name.removesuffix(".kohya.safetensors").removesuffix(".safetensors")
            return cls(out.parent, {domains[0]: out.name}, f"{stem}.README.md", f"{stem}.samples.png", out.name)
        check_domain_names(domains)
        return cls(out, {d: f"{d}{suffix}" for d in domains}, "README.md", "images/samples.png")

    def names(self) -> list[str]:
        return [*self.files.values(), self.card, self.image]

    def check_replaceable(self) -> None:
        """ValueError naming the existing targets this export did not write (or that changed since)."""
        from pm_lightning.models.lora_files import file_sha256

        ours = read_manifest(self.folder)
        foreign = [
            n
            for n in self.names()
            if (self.folder / n).exists()
            and n != self.named
            and not ((self.folder / n).is_file() and ours.get(n) == file_sha256(self.folder / n))
        ]
        if foreign:
            raise ValueError(
                f"{self.folder} already holds {foreign}, which this export did not write: nothing was written; "
                "give a new or empty folder as --out (or move those files)"
            )

    def record(self) -> None:
        """Add the files written (those that exist now) with their sha256 to the folder's manifest."""
        from pm_lightning.models.lora_files import file_sha256

        manifest = read_manifest(self.folder)
        manifest.update({n: file_sha256(self.folder / n) for n in self.names() if (self.folder / n).is_file()})
        with atomic_path(self.folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_manifest(folder: Path) -> dict[str, str]:
    """{file name: sha256} of the files exports wrote into `folder` ({} when none, or when unreadable)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def upload_allow_list(folder: Path) -> list[str]:
    """What a push of `folder` sends: the files its exports wrote (LoRA files, card, picture) and still hold;
    never anything else that lies there (`.env`, notes, other models)."""
    return sorted(n for n in read_manifest(folder) if (Path(folder) / n).is_file())
