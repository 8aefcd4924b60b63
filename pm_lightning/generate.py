"""Text (or a finished image) -> a process sequence: `python -m pm_lightning.generate --prompt TEXT --out DIR`.

    python -m pm_lightning.generate --prompt "a lego tower of eight red bricks" --domain lego --out outputs/lego
    python -m pm_lightning.generate --prompt "..." --domain lego --adaptive --steps "one" ... "nine" --out DIR
    python -m pm_lightning.generate --prompt "a pink cake" --image cake.png --frames 4 --out DIR     # ReCraft
    python -m pm_lightning.generate --base black-forest-labs/FLUX.1-dev --stage1 lego.safetensors --prompt ... --out DIR

Stage 1: stock diffusers `FluxPipeline` with the exported stage-1 LoRA loaded by `pipe.load_lora_weights(file)`,
so the same seed in stock diffusers gives the same grid. `--adaptive`: sliding-window adaptive steps
(`inference/adaptive.py`) with stage-2 insertions (`inference/references.insert_between`). `--image`: ReCraft.
With base "tiny" the LoRA files default to what `make train-stage1` / `make train-stage2` / `make train-recraft`
write (paths read from experiments/tiny*.yaml); a missing file means the plain base, and the report says so.
Outputs: `inference/outputs.py` (grid.png, frames/, sequence.gif, report.json, index.html).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"stage1": REPO / "experiments" / "tiny.yaml", "stage2": REPO / "experiments" / "tiny_stage2.yaml",
           "recraft": REPO / "experiments" / "tiny_recraft.yaml"}


# ---------------------------------------------------------------- defaults from the tiny experiment configs


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _repo_path(value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else REPO / path


def lora_dir(kind: str) -> Path:
    """`<trainer.default_root_dir>/lora/final` of the tiny config for `kind` (where LoraExport writes at the end)."""
    root = _yaml(CONFIGS[kind]).get("trainer", {}).get("default_root_dir", f"runs/{CONFIGS[kind].stem}")
    return _repo_path(root) / "lora" / "final"


def training_domains() -> list[str]:
    """The stage-1 tiny config's domain list (data.domains)."""
    return list(_yaml(CONFIGS["stage1"]).get("data", {}).get("domains", []))


def default_lora(kind: str, domain: str | None = None) -> Path:
    """Default LoRA file: stage1 -> <domain>.safetensors (unseen.safetensors for an unknown domain), else lora.safetensors."""
    if kind == "stage1":
        name = domain if domain in training_domains() else "unseen"
        return lora_dir("stage1") / f"{name}.safetensors"
    return lora_dir(kind) / "lora.safetensors"


def fused_stage1(kind: str) -> Path | None:
    """The stage-1 file the tiny stage-2 / ReCraft config fuses under its LoRA (model.init_args.stage1)."""
    return _repo_path(_yaml(CONFIGS[kind]).get("model", {}).get("init_args", {}).get("stage1"))


def grid_resolution(base: str, frames: int, override: int | None = None) -> int:
    """Grid side in px: the variant's training resolution (tiny 192, else 1024) rounded up to whole 16-px cells
    per row (FLUX.1-dev: 9 frames -> 1056, 4 frames -> 1024)."""
    from pm_lightning.data.grid import layout_for
    from pm_lightning.models.variants import VARIANTS

    rows, _ = layout_for(frames)
    if override:
        if override % (16 * rows):
            raise SystemExit(f"--resolution {override} does not split into {rows} cells of whole 16-px tokens")
        return override
    variant = VARIANTS.get(base) or next((v for v in VARIANTS.values() if Path(v.source).resolve() == Path(base).resolve()), None)
    res = variant.resolution if variant is not None and variant.resolution else 1024
    return math.ceil(res / (16 * rows)) * 16 * rows


# ---------------------------------------------------------------- models


@contextmanager
def _quiet_diffusers():
    """Hide "no LoRA keys for CLIPTextModel": expected, the files are transformer-only."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


class Models:
    """One backbone and which LoRA files are fused into it / loaded on it; reloads only when the fused file changes."""

    def __init__(self, base: str):
        self.base = base
        self.backbone = None
        self.fused: str | None = None
        self.loaded: str | None = None

    def use(self, fused: Path | None, lora: Path | None):
        """The backbone with `fused` folded into its weights and `lora` loaded (diffusers' load_lora_weights)."""
        from pm_lightning.models.backbone import FluxBackbone
        from pm_lightning.stage2 import fuse_lora_file

        fused, lora = (str(fused) if fused else None), (str(lora) if lora else None)
        if self.backbone is None or (self.fused is not None and self.fused != fused):
            self.backbone, self.fused, self.loaded = FluxBackbone.from_pretrained(self.base), None, None
        if self.loaded is not None and self.loaded != lora:
            self.backbone.pipeline().unload_lora_weights()
            self.loaded = None
        if fused is not None and self.fused is None:
            fuse_lora_file(self.backbone, fused)
            self.fused = fused
        if lora is not None and self.loaded is None:
            with _quiet_diffusers():
                self.backbone.pipeline().load_lora_weights(lora, adapter_name="pm")
            self.loaded = lora
        return self.backbone


@torch.no_grad()
def sample_grid(backbone, prompt: str, resolution: int, num_inference_steps: int, guidance: float, seed: int) -> Image.Image:
    """Stage 1: one grid from the stock FluxPipeline call (CPU generator seeded with `seed`)."""
    pipe = backbone.pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=prompt, height=resolution, width=resolution, num_inference_steps=num_inference_steps,
               guidance_scale=guidance, generator=torch.Generator(device="cpu").manual_seed(seed),
               max_sequence_length=backbone.max_sequence_length)
    return out.images[0]


def make_insert_fn(backbone, prompt: str, cell: int, num_inference_steps: int, guidance: float, seed: int):
    """Stage-2 insertion (a, b, n) -> n frames; call c uses seed + 1000 + c, so reruns are identical."""
    from pm_lightning.inference.references import insert_between

    calls = itertools.count()

    def insert_fn(a: Image.Image, b: Image.Image, n: int) -> list[Image.Image]:
        return insert_between(backbone, a, b, prompt, n=n, cell=cell, num_inference_steps=num_inference_steps,
                              guidance=guidance, seed=seed + 1000 + next(calls))

    return insert_fn


def stage_file(flag: Path | None, default: Path | None, what: str, make: str, notes: list[str]) -> Path | None:
    """The flag's file (must exist), else the default when it exists, else None with a note."""
    if flag is not None:
        if not Path(flag).is_file():
            raise SystemExit(f"{what} file {str(flag)!r} not found")
        return Path(flag)
    if default is not None and default.is_file():
        return default
    notes.append(f"no {what} LoRA ({default} missing; `{make}` writes it): the plain base is used" if default
                 else f"no {what} LoRA given: the plain base is used")
    return None


def run_adaptive(models: Models, frames: list[Image.Image], steps, prompt: str, args, cfg, notes: list[str]):
    """Adaptive steps on `frames` with stage-2 insertions and the evaluators; returns the AdaptiveResult."""
    from pm_lightning.eval.encoders import Encoders
    from pm_lightning.inference.adaptive import EncoderScorer, adapt_sequence

    tiny = models.base == "tiny"
    stage2 = stage_file(args.stage2, default_lora("stage2") if tiny else None, "stage-2", "make train-stage2", notes)
    fuse = args.stage2_fuse or (fused_stage1("stage2") if tiny and stage2 is not None else None)
    if fuse is not None and not Path(fuse).is_file():
        raise SystemExit(f"stage-1 file fused under the stage-2 LoRA {str(fuse)!r} not found (--stage2-fuse)")
    backbone = models.use(fuse, stage2)
    cell = args.cell or max(16, frames[0].size[0] // 16 * 16)
    insert_fn = make_insert_fn(backbone, prompt, cell, args.num_inference_steps, args.guidance, args.seed)
    scorer = EncoderScorer(Encoders.load(clip=args.clip, dino=args.dino))
    result = adapt_sequence(frames, scorer, insert_fn, cfg, steps)
    result.report["models"] = {"stage2": str(stage2) if stage2 else None, "stage2_fused_stage1": str(fuse) if fuse else None,
                               "cell": cell, "clip": args.clip, "dino": args.dino}
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


# ---------------------------------------------------------------- CLI


def common_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared with `python -m pm_lightning.adapt`."""
    from pm_lightning.inference.adaptive import add_config_flags

    p.add_argument("--base", default="tiny", help="Flux variant (tiny, flux-dev, ...), diffusers directory or hub id")
    p.add_argument("--stage2", type=Path, default=None, help="stage-2 (dual reference) LoRA file")
    p.add_argument("--stage2-fuse", type=Path, default=None,
                   help="stage-1 LoRA the stage-2 LoRA was trained on (fused first; tiny default from experiments/tiny_stage2.yaml)")
    p.add_argument("--steps", nargs="+", default=None, help="one step text per frame (captions; Delta_sem)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-inference-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--cell", type=int, default=None, help="stage-2 frame size in px (default: the frames' size, whole 16 px)")
    p.add_argument("--clip", default="tiny", help="CLIP for the adaptive steps (Encoders.load spec)")
    p.add_argument("--dino", default="tiny", help="DINO for the adaptive steps (Encoders.load spec)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_config_flags(p)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pm_lightning.generate", description=__doc__.split("\n")[0])
    p.add_argument("--prompt", required=True)
    p.add_argument("--domain", default=None, help="training domain name (its stage-1 LoRA); unknown/none -> unseen")
    p.add_argument("--stage1", type=Path, default=None, help="exported stage-1 LoRA file (diffusers format)")
    p.add_argument("--adaptive", action="store_true", help="run the sliding-window adaptive steps")
    p.add_argument("--image", type=Path, default=None, help="ReCraft: the finished image -> the steps before it")
    p.add_argument("--recraft", type=Path, default=None, help="ReCraft LoRA file (tiny default: make train-recraft's)")
    p.add_argument("--recraft-fuse", type=Path, default=None, help="stage-1 LoRA the ReCraft LoRA was trained on")
    p.add_argument("--frames", type=int, choices=(4, 9), default=None,
                   help="frames of the grid (default: the synthetic domain's count, else 9)")
    p.add_argument("--resolution", type=int, default=None, help="grid side in px (default: tiny 192, else 1024 / 1056)")
    common_flags(p)
    return p.parse_args(argv)


def default_frames(domain: str | None) -> int:
    from pm_lightning.data.synth import DOMAINS

    return DOMAINS.get(domain or "", 9)


def main(argv: list[str] | None = None) -> int:
    from pm_lightning.data.grid import frames_to_grid, grid_to_frames, layout_for
    from pm_lightning.inference.adaptive import config_from_args
    from pm_lightning.inference.outputs import write_sample

    args = parse(argv)
    cfg = config_from_args(args)
    frames_n = args.frames or default_frames(args.domain)
    rows, cols = layout_for(frames_n)
    if args.steps and len(args.steps) != frames_n:
        raise SystemExit(f"--steps gives {len(args.steps)} texts for {frames_n} frames: give one per frame")
    resolution = grid_resolution(args.base, frames_n, args.resolution)
    notes: list[str] = []
    tiny = args.base == "tiny"
    models, start, timings = Models(args.base), time.perf_counter(), {}
    if args.image is None:
        stage1 = stage_file(args.stage1, default_lora("stage1", args.domain) if tiny else None, "stage-1",
                            "make train-stage1", notes)
        grid = sample_grid(models.use(None, stage1), args.prompt, resolution, args.num_inference_steps, args.guidance, args.seed)
        frames = grid_to_frames(grid, rows, cols)
        used = {"stage1": str(stage1) if stage1 else None}
    else:
        from pm_lightning.inference.references import recraft

        recraft_file = stage_file(args.recraft, default_lora("recraft") if tiny else None, "ReCraft", "make train-recraft", notes)
        fuse = args.recraft_fuse or (fused_stage1("recraft") if tiny and recraft_file is not None else None)
        backbone = models.use(fuse, recraft_file)
        frames = recraft(backbone, Image.open(args.image).convert("RGB"), args.prompt, frames=frames_n,
                         cell=resolution // rows, num_inference_steps=args.num_inference_steps,
                         guidance=args.guidance, seed=args.seed)
        grid = frames_to_grid(frames, rows, cols)
        used = {"recraft": str(recraft_file) if recraft_file else None, "recraft_fused_stage1": str(fuse) if fuse else None,
                "image": str(args.image)}
    timings["stage1_s" if args.image is None else "recraft_s"] = round(time.perf_counter() - start, 3)
    result = None
    if args.adaptive:
        t0 = time.perf_counter()
        result = run_adaptive(models, frames, args.steps, args.prompt, args, cfg, notes)
        timings["adaptive_s"] = round(time.perf_counter() - t0, 3)
    final = result.images if result is not None else frames
    report = {
        "prompt": args.prompt,
        "domain": args.domain or "unseen",
        "seed": args.seed,
        "mode": "recraft" if args.image else "text",
        "steps": args.steps,
        "settings": {"base": args.base, "frames": frames_n, "rows": rows, "cols": cols, "resolution": resolution,
                     "num_inference_steps": args.num_inference_steps, "guidance": args.guidance,
                     "max_sequence_length": models.backbone.max_sequence_length, "adaptive": args.adaptive},
        "models": used,
        "notes": notes,
        "adaptive": result.report if result is not None else None,
        "timings": timings,
    }
    write_sample(args.out, grid, final, captions_for(result, args.steps, len(final)), report)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.out}/ ({len(final)} frames: grid.png, frames/, sequence.gif, report.json, index.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
