"""One inference session: the backbone and the LoRA files on it, stage-1 grids, stage-2 insertions, adaptive steps.

What `python -m pm_lightning.generate` and `python -m pm_lightning.adapt` (and later the web demo) share.
Stage 1 is the stock diffusers `FluxPipeline` with the exported stage-1 LoRA loaded by
`pipe.load_lora_weights(file)`, so the same seed in stock diffusers gives the same grid.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
from PIL import Image

from pm_lightning.core.errors import BadInput
from pm_lightning.core.paths import portable
from pm_lightning.core.progress import pipeline_config
from pm_lightning.data.importers import load_user_image
from pm_lightning.inference.cache import CacheConfig, transformer_cache
from pm_lightning.inference.request import GenerationRequest
from pm_lightning.inference.runtime import Runtime
from pm_lightning.inference.tiny_defaults import default_lora, fused_stage1


def grid_resolution(base: str, frames: int, override: int | None = None) -> int:
    """Grid side in px: the variant's training resolution (tiny 192, else 1024) rounded up to whole 16-px cells
    per row (FLUX.1-dev: 9 frames -> 1056, 4 frames -> 1024)."""
    from pm_lightning.data.grid import layout_for
    from pm_lightning.inference.flags import split_error
    from pm_lightning.models.variants import find_variant

    rows, _ = layout_for(frames)
    if override is not None:
        if problem := split_error(override, frames):
            raise BadInput(f"--resolution {problem}")
        return override
    variant = find_variant(base)
    res = variant.resolution if variant is not None and variant.resolution else 1024
    return math.ceil(res / (16 * rows)) * 16 * rows


# ---------------------------------------------------------------- models


class Models:
    """One backbone and which LoRA files are fused into it / loaded on it; reloads only when the fused file changes.

    `use(fused, lora, extras)`: `fused` folded into the weights, the procedural `lora` loaded as adapter "pm" at
    weight 1 and each extra (file, weight) as "extra<i>", combined by diffusers' multi-adapter weighting
    (`pipe.set_adapters(names, adapter_weights)`): MakeAnything's style-LoRA stacking."""

    def __init__(self, base: str, runtime: Runtime | None = None):
        self.base = base
        self.runtime = runtime or Runtime()
        self.backbone = None
        self.fused: str | None = None
        self.loaded: tuple | None = None
        self._encoders: dict[tuple[str, str], object] = {}

    def encoders(self, clip: str, dino: str):
        """The evaluators of the adaptive steps (`Encoders.load`), loaded once per (clip, dino) for the session."""
        if (clip, dino) not in self._encoders:
            from pm_lightning.models.encoders import Encoders

            self._encoders[clip, dino] = Encoders.load(clip=clip, dino=dino, device=self.runtime.device)
        return self._encoders[clip, dino]

    def use(self, fused: Path | None, lora: Path | None, extras: list[tuple[Path, float]] | tuple = ()):
        """The backbone with `fused` folded into its weights and `lora` (+ `extras`) loaded."""
        from pm_lightning.models.backbone import FluxBackbone
        from pm_lightning.models.lora_files import fuse_lora_file

        fused = str(fused) if fused else None
        wanted = (str(lora) if lora else None, tuple((str(p), float(w)) for p, w in extras))
        if self.backbone is None or (self.fused is not None and self.fused != fused):
            self.backbone = None  # the old one's memory is free before the new one loads
            self.backbone = FluxBackbone.from_pretrained(self.base, dtype=self.runtime.dtype)
            self.runtime.place(self.backbone)
            self.fused, self.loaded = None, None
        if self.loaded is not None and self.loaded != wanted:
            self.backbone.pipeline().unload_lora_weights()
            self.loaded = None
        if fused is not None and self.fused is None:
            try:
                fuse_lora_file(self.backbone, fused)
            except BaseException:
                self.backbone = None  # the weights may be half-fused: the next request loads the base afresh
                raise
            self.fused = fused
        if self.loaded is None and (wanted[0] or wanted[1]):
            pipe = self.backbone.pipeline()
            try:
                self._load(pipe, wanted)
            except BaseException:
                pipe.unload_lora_weights()  # what was loaded before the failing file goes too: state = record
                raise
        self.loaded = wanted
        return self.backbone

    @staticmethod
    def _load(pipe, wanted: tuple) -> None:
        """The procedural LoRA as "pm" (weight 1) and each extra as "extra<i>" at its weight."""
        from pm_lightning.models.lora_files import load_lora_file

        names, weights = [], []
        if wanted[0]:
            load_lora_file(pipe, wanted[0], "pm")
            names, weights = ["pm"], [1.0]
        for i, (path, weight) in enumerate(wanted[1]):
            load_lora_file(pipe, path, f"extra{i}", role="extra LoRA file")
            names.append(f"extra{i}")
            weights.append(weight)
        pipe.set_adapters(names, adapter_weights=weights)


@torch.no_grad()
def sample_grid(
    backbone,
    prompt: str,
    resolution: int,
    num_inference_steps: int,
    guidance: float,
    seed: int,
    cache: CacheConfig | None = None,
) -> Image.Image:
    """Stage 1: one grid from the stock FluxPipeline call (CPU generator seeded with `seed`), optionally cached."""
    pipe = backbone.pipeline()
    pipe.set_progress_bar_config(**pipeline_config("stage 1"))  # the sampler's steps; off: --no-progress
    with transformer_cache(backbone.transformer, cache):
        out = pipe(
            prompt=prompt,
            height=resolution,
            width=resolution,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            max_sequence_length=backbone.max_sequence_length,
        )
    return out.images[0]


def make_insert_fn(
    backbone,
    prompt: str,
    cell: int,
    num_inference_steps: int,
    guidance: float,
    seed: int,
    max_batch: int = 8,
    cache: CacheConfig | None = None,
):
    """Stage-2 insertions as a batch function for `adapt_sequence(insert_batch=...)`: one sampler call per round
    (chunks of `max_batch` grids). Insertion c (counted over the whole run, in pair order) uses seed + 1000 + c,
    so a rerun, or the same insertions sampled one by one, gives the same frames."""
    from pm_lightning.inference.reference_sampling import insert_between_batch

    calls = itertools.count()

    def insert_batch(requests: list[tuple[Image.Image, Image.Image, int]]) -> list[list[Image.Image]]:
        seeds = [seed + 1000 + next(calls) for _ in requests]
        with transformer_cache(backbone.transformer, cache):
            return insert_between_batch(
                backbone, requests, prompt, seeds, cell, num_inference_steps, guidance, max_batch=max_batch
            )

    return insert_batch


def stage_file(flag: Path | None, default: Path | None, what: str, make: str, notes: list[str]) -> Path | None:
    """The flag's file (must exist), else the default when it exists, else None with a note."""
    if flag is not None:
        if not Path(flag).is_file():
            raise BadInput(f"{what} file {str(flag)!r} not found")
        return Path(flag)
    if default is not None and default.is_file():
        return default
    notes.append(
        f"no {what} LoRA ({default} missing; `{make}` writes it): the plain base is used"
        if default
        else f"no {what} LoRA given: the plain base is used"
    )
    return None


def stage1_under(lora: Path | None, flag: Path | None, kind: str, tiny: bool, option: str) -> Path | None:
    """The stage-1 file to fuse under a stage-2 / ReCraft `lora`: the flag's; else the one the LoRA records in its
    metadata (`LoraExport` / `export` write it), only when its sha256 matches and it lies beside the LoRA or under
    runs/ (`trusted_stage1`); else, for the tiny base, the tiny config's `model.init_args.stage1`; else none (the
    plain base)."""
    from pm_lightning.models.lora_files import read_stage1_metadata, trusted_stage1

    if flag is not None:
        if not Path(flag).is_file():
            raise BadInput(f"stage-1 file fused under the {kind} LoRA {str(flag)!r} not found ({option})")
        return Path(flag)
    recorded = read_stage1_metadata(lora) if lora is not None else None
    if recorded is None:
        return fused_stage1(kind) if tiny and lora is not None else None
    path, sha = recorded
    if not path:
        return None  # trained on the plain base
    return trusted_stage1(lora, path, sha, option)


def run_adaptive(models: Models, frames: list[Image.Image], req: GenerationRequest, cfg, notes: list[str]):
    """Adaptive steps on `frames` (the request's step texts, its prompt for stage 2) with stage-2 insertions and
    the evaluators; returns the AdaptiveResult."""
    from pm_lightning.inference.adaptive import EncoderScorer, adapt_sequence

    tiny = models.base == "tiny"
    stage2 = stage_file(req.stage2, default_lora("stage2") if tiny else None, "stage-2", "make train-stage2", notes)
    fuse = stage1_under(stage2, req.stage2_fuse, "stage2", tiny, "--stage2-fuse")
    backbone = models.use(fuse, stage2)
    cell = req.cell or max(16, frames[0].size[0] // 16 * 16)
    insert_batch = make_insert_fn(
        backbone,
        req.prompt,
        cell,
        req.num_inference_steps,
        req.guidance,
        req.seed,
        req.insert_batch,
        req.cache,
    )
    scorer = EncoderScorer(models.encoders(req.clip, req.dino))
    result = adapt_sequence(frames, scorer, cfg=cfg, steps=req.steps, insert_batch=insert_batch)
    result.report["models"] = {
        "stage2": portable(stage2) if stage2 else None,
        "stage2_fused_stage1": portable(fuse) if fuse else None,
        "cell": cell,
        "clip": req.clip,
        "dino": req.dino,
    }
    return result


def captions_for(result, steps, n: int) -> list[str]:
    """One caption per final frame: its step text, or where it came from."""
    if result is None:
        return [steps[k] if steps else f"step {k + 1}" for k in range(n)]
    out = []
    for f in result.frames:
        if f.origin.get("source") == "inserted":
            a, b = f.origin["between"]
            out.append(f"(inserted between {a} and {b}, round {f.origin['round']})")
        else:
            out.append(f.text or f"step {int(f.label) + 1}")
    return out


def default_frames(domain: str | None) -> int:
    from pm_lightning.data.synthetic_corpus import DOMAINS

    return DOMAINS.get(domain or "", 9)


def first_sequence(models: Models, req: GenerationRequest, frames_n: int, resolution: int, notes: list[str]):
    """The sequence before adaptive steps: a stage-1 grid from the prompt, or ReCraft from `req.image`.

    Returns (grid image, frames, the LoRA files used); a missing default LoRA means the plain base, noted.
    """
    from pm_lightning.data.grid import frames_to_grid, grid_to_frames, layout_for

    rows, cols = layout_for(frames_n)
    tiny = models.base == "tiny"
    if req.image is None:
        stage1 = stage_file(
            req.stage1, default_lora("stage1", req.domain) if tiny else None, "stage-1", "make train-stage1", notes
        )
        grid = sample_grid(
            models.use(None, stage1, req.extra_lora),
            req.prompt,
            resolution,
            req.num_inference_steps,
            req.guidance,
            req.seed,
            req.cache,
        )
        frames = grid_to_frames(grid, rows, cols)
        used = {"stage1": portable(stage1) if stage1 else None}
        if req.extra_lora:
            used["extra_loras"] = [{"file": portable(p), "weight": w} for p, w in req.extra_lora]
    else:
        from pm_lightning.inference.reference_sampling import recraft

        recraft_file = stage_file(
            req.recraft, default_lora("recraft") if tiny else None, "ReCraft", "make train-recraft", notes
        )
        fuse = stage1_under(recraft_file, req.recraft_fuse, "recraft", tiny, "--recraft-fuse")
        backbone = models.use(fuse, recraft_file)
        with transformer_cache(backbone.transformer, req.cache):
            frames = recraft(
                backbone,
                load_user_image(req.image, "--image"),
                req.prompt,
                frames=frames_n,
                cell=resolution // rows,
                num_inference_steps=req.num_inference_steps,
                guidance=req.guidance,
                seed=req.seed,
            )
        grid = frames_to_grid(frames, rows, cols)
        used = {
            "recraft": portable(recraft_file) if recraft_file else None,
            "recraft_fused_stage1": portable(fuse) if fuse else None,
            "image": portable(req.image),
        }
    return grid, frames, used


def generation_report(
    req: GenerationRequest,
    models: Models,
    settings: dict,
    used: dict,
    notes: list[str],
    result,
    timings: dict,
    mode: str | None = None,
) -> dict:
    """report.json of one `generate` / `adapt` run (the demo's, the ablation's samples): the prompt, every setting,
    the LoRA files used, notes, adaptive rounds. `mode`: text / recraft (from the request), or adapt."""
    return {
        "prompt": req.prompt,
        "domain": req.domain or "unseen",
        "seed": req.seed,
        "mode": mode or ("recraft" if req.image else "text"),
        "steps": req.steps,
        "settings": {
            **settings,
            "num_inference_steps": req.num_inference_steps,
            "guidance": req.guidance,
            "max_sequence_length": models.backbone.max_sequence_length,
            **models.runtime.describe(),
            "adaptive": req.adaptive,
            "cache": vars(req.cache),
            "insert_batch": req.insert_batch,
        },
        "models": used,
        "notes": notes,
        "adaptive": result.report if result is not None else None,
        "timings": timings,
    }
