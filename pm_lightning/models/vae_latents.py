"""The VAE latent cache: every grid of a shard set encoded once, read by training instead of pixels.

Grids carry no augmentation (a grid is decoded the same way every epoch, `data/stream.py`), so their latents can be
computed once (`python -m pm_lightning.latent_cache`) and training never runs the VAE encoder: with
`model.init_args.latent_cache_dir` the VAE stays in CPU memory (`FluxBackbone.park_vae`), and only sample rendering
moves it to the GPU for the render.

Layout: `<root>/<cache id>/meta.json` + `<root>/<cache id>/<grid id>.safetensors` ({"latents": (16, H/8, W/8)}).
The cache id is a hash of what the latents depend on: the VAE (a SHA-256 of its config and of every weight), the
resolution the grid is decoded at, and the dtype it is encoded in. meta.json records those and the base id, so a
run whose VAE, resolution or dtype differs finds no folder of its own and is refused with what the cache holds; a
grid id (sha256 of the PNG, `data/grid.py`) missing from the folder stops the run naming the grid, its shard
and the command to run. Nothing is ever re-encoded during training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pm_lightning.core.atomic import atomic_path
from pm_lightning.core.dtypes import dtype_name
from pm_lightning.core.progress import progress_bar
from pm_lightning.data.pixels import unit_range
from pm_lightning.data.shard_grids import shard_grids
from pm_lightning.models.backbone import vae_encode

FORMAT = 1
CONFIG_IGNORED = ("_diffusers_version", "_name_or_path", "_use_default_values")


class MissingLatents(KeyError):
    """A grid of the batch has no latents in the cache (training never re-encodes)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WrongLatentCache(ValueError):
    """The cache holds latents of another VAE, resolution or dtype than the run's."""


def vae_fingerprint(vae) -> str:
    """SHA-256 of the VAE's config (version fields left out) and of every weight's bytes, in state-dict order."""
    h = hashlib.sha256()
    config = {k: v for k, v in dict(vae.config).items() if k not in CONFIG_IGNORED}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in vae.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class LatentCache:
    """Latents of one VAE in one dtype, one folder per resolution, under `root`."""

    def __init__(self, root: str | Path, vae, dtype: torch.dtype, base: str = ""):
        self.root, self.dtype, self.base = Path(root), dtype, base
        self.fingerprint = vae_fingerprint(vae)
        self.scaling = {"scaling_factor": vae.config.scaling_factor, "shift_factor": vae.config.shift_factor}
        self._checked: set[int] = set()

    def meta(self, resolution: int) -> dict:
        """What the latents of this folder were made with."""
        return {
            "format": FORMAT,
            "base": self.base,
            "vae_sha256": self.fingerprint,
            "resolution": resolution,
            "dtype": dtype_name(self.dtype),
            **self.scaling,
        }

    def folder(self, resolution: int) -> Path:
        ident = f"{self.fingerprint}|{resolution}|{dtype_name(self.dtype)}|{FORMAT}"
        return self.root / hashlib.sha256(ident.encode()).hexdigest()[:16]

    def command(self, resolution: int) -> str:
        return (
            f"python -m pm_lightning.latent_cache --shards <the training and validation shards> --base {self.base} "
            f"--resolution {resolution} --dtype {dtype_name(self.dtype)} --out {self.root}"
        )

    # ------------------------------------------------------------------ writing

    def open(self, resolution: int) -> Path:
        """The folder of `resolution`, created with its meta.json."""
        folder = self.folder(resolution)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "meta.json").is_file():
            with atomic_path(folder / "meta.json") as tmp:
                Path(tmp).write_text(json.dumps(self.meta(resolution), indent=1))
        return folder

    def existing(self, resolution: int) -> set[str]:
        """Grid ids already cached at `resolution`."""
        return {p.stem for p in self.folder(resolution).glob("*.safetensors")}

    def save(self, grid_id: str, latents: torch.Tensor, resolution: int, key: str = "") -> None:
        """Write one grid's (16, h, w) latents (atomic: a concurrent reader never sees half a file)."""
        path = self.folder(resolution) / f"{grid_id}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"latents": latents.to(self.dtype).cpu().contiguous()}, tmp, metadata={"key": key})

    # ------------------------------------------------------------------ reading

    def check(self, resolution: int) -> Path:
        """The folder of `resolution`, or WrongLatentCache saying what the cache holds instead."""
        folder = self.folder(resolution)
        if resolution in self._checked:
            return folder
        if not (folder / "meta.json").is_file():
            held = [json.loads(m.read_text()) for m in sorted(self.root.glob("*/meta.json"))]
            wanted = f"base {self.base!r} (VAE sha256 {self.fingerprint[:12]}), resolution {resolution}, dtype {dtype_name(self.dtype)}"
            if not held:
                raise MissingLatents(
                    f"no latent cache at {self.root} for {wanted}. Encode the grids: {self.command(resolution)}"
                )
            found = "; ".join(
                f"base {m['base']!r} (VAE sha256 {m['vae_sha256'][:12]}), resolution {m['resolution']}, dtype {m['dtype']}"
                for m in held
            )
            raise WrongLatentCache(
                f"the latent cache {self.root} was not made for this run: it holds [{found}], this run needs {wanted}. "
                f"Latents of another VAE, resolution or dtype are refused; encode these: {self.command(resolution)}"
            )
        self._checked.add(resolution)
        return folder

    def load(self, grid_ids: list[str], resolution: int, keys: list[str] | None = None, urls: list[str] | None = None):
        """(B, 16, h, w) latents of the grids, or MissingLatents naming the first missing grid and the command."""
        folder = self.check(resolution)
        paths = [folder / f"{g}.safetensors" for g in grid_ids]
        missing = [i for i, p in enumerate(paths) if not p.is_file()]
        if missing:
            i = missing[0]
            name = f"grid {keys[i]!r} of shard {urls[i]}" if keys and urls else "a grid"
            raise MissingLatents(
                f"{name} (grid id {grid_ids[i][:16]}) is not in the latent cache {folder} ({len(missing)} of this "
                f"batch's {len(paths)} grids missing); training never re-encodes. Encode the grids: "
                f"{self.command(resolution)}"
            )
        return torch.stack([load_file(p)["latents"] for p in paths])  # (B, 16, h, w)


def to_unit_range(pixels: list[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (H, W, 3) grids -> (B, 3, H, W) float32 in [-1, 1] on `device`, exactly as training converts them."""
    return unit_range(torch.from_numpy(np.stack(pixels)).to(device))  # (B, 3, H, W)


@torch.no_grad()
def precompute(cache: LatentCache, vae, shards: list[str], resolution: int, batch_size: int = 8) -> tuple[int, int]:
    """Encode every grid of `shards` at `resolution` not yet in `cache`; (written, already there)."""
    cache.open(resolution)
    done = cache.existing(resolution)
    before, pending, written = len(done), [], 0

    def flush():
        latents = vae_encode(vae, to_unit_range([g.pixels for g in pending], vae.device).to(vae.dtype))  # (B, 16, h, w)
        for g, z in zip(pending, latents):
            cache.save(g.grid_id, z, resolution, g.key)
        pending.clear()

    for grid in progress_bar(shard_grids(shards, resolution, skip=done), desc="latent cache", unit="grid"):
        done.add(grid.grid_id)  # the same grid twice in the shards: encoded once
        pending.append(grid)
        written += 1
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return written, before
