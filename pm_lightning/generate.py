"""Text (or a finished image) -> a process sequence: `python -m pm_lightning.generate --prompt TEXT --out DIR`.

    python -m pm_lightning.generate --prompt "a lego tower of eight red bricks" --domain lego --out outputs/lego
    python -m pm_lightning.generate --prompt "..." --domain lego --adaptive --steps "one" ... "nine" --out DIR
    python -m pm_lightning.generate --prompt "a pink cake" --image cake.png --frames 4 --out DIR     # ReCraft
    python -m pm_lightning.generate --prompt "an origami crane" --domain origami --extra-lora origami.safetensors:0.8 ...
    python -m pm_lightning.generate --base black-forest-labs/FLUX.1-dev --stage1 lego.safetensors --prompt ... --out DIR

Stage 1: stock diffusers `FluxPipeline` with the exported stage-1 LoRA loaded by `pipe.load_lora_weights(file)`,
so the same seed in stock diffusers gives the same grid. `--adaptive`: sliding-window adaptive steps
(`inference/adaptive.py`) with stage-2 insertions (`inference/reference_sampling.py`, every insertion of a round
in one sampler call); without `--steps`, each frame's step text for Delta_sem is retrieved from the training corpus'
step vocabulary by the tiny CLIP (`inference/step_texts.py`; the report says where the texts came from).
`--cache first-block|taylorseer`: diffusers step caches (`inference/cache.py`). `--image`: ReCraft.
With base "tiny" the LoRA files default to what `make train-stage1` / `make train-stage2` / `make train-recraft`
write (paths read from experiments/tiny*.yaml); a missing file means the plain base, and the report says so.
A stage-2 / ReCraft LoRA brings the stage-1 file it was trained on (its metadata). `--device` / `--dtype` (default
cuda + bf16 when there is a GPU), the variant's sampler defaults, `--vae-tiling` / `--cpu-offload`: `inference/runtime.py`.
Outputs: `inference/outputs.py` (grid.png, frames/, sequence.gif, report.json, index.html).
"""

from __future__ import annotations

import argparse
import sys
import time

from pm_lightning.core.errors import BadInput
from pm_lightning.core.paths import portable
from pm_lightning.core.progress import apply_progress_flag
from pm_lightning.core.validate import refuse
from pm_lightning.inference.flags import generate_parser, split_error

PROG = "python -m pm_lightning.generate"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The flags, each checked by its rule, and the checks between them (frames, steps, resolution): light, so a bad
    value is refused in about a second with nothing written."""
    # inside: the corpus table brings PIL, which is not needed for --help (as on main)
    from pm_lightning.data.synthetic_corpus import DOMAINS

    p = generate_parser(PROG, __doc__.split("\n")[0])
    args = p.parse_args(argv)
    frames = args.frames or DOMAINS.get(args.domain or "", 9)
    if args.steps and len(args.steps) != frames:
        p.error(f"argument --steps: {len(args.steps)} texts for {frames} frames: give one per frame")
    if args.resolution is not None and (problem := split_error(args.resolution, frames)):
        p.error(f"argument --resolution: {problem}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print where the outputs went; bad input exits with its message (exit code 2)."""
    args = parse(argv)
    apply_progress_flag(args)
    try:
        return run(args)
    except (BadInput, FileNotFoundError, ValueError) as err:  # ValueError: adaptive settings that contradict
        refuse(PROG, err)


def run(args: argparse.Namespace) -> int:
    # after parsing: torch and the inference stack, which --help and a bad flag skip (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.data.grid import layout_for
    from pm_lightning.inference.adaptive_settings import config_from_args
    from pm_lightning.inference.outputs import write_sample
    from pm_lightning.inference.request import request_from_args
    from pm_lightning.inference.runtime import runtime_from_args
    from pm_lightning.inference.session import (
        Models,
        captions_for,
        default_frames,
        first_sequence,
        generation_report,
        grid_resolution,
        run_adaptive,
    )
    from pm_lightning.inference.step_texts import with_step_texts

    cfg, req = config_from_args(args), request_from_args(args)
    frames_n = req.frames or default_frames(req.domain)
    rows, cols = layout_for(frames_n)
    resolution = grid_resolution(req.base, frames_n, req.resolution)
    notes: list[str] = []
    models, start, timings = Models(req.base, runtime_from_args(args)), time.perf_counter(), {}
    grid, frames, used = first_sequence(models, req, frames_n, resolution, notes)
    timings["stage1_s" if req.image is None else "recraft_s"] = round(time.perf_counter() - start, 3)
    result = None
    if req.adaptive:
        t0 = time.perf_counter()
        with_texts, texts = with_step_texts(models, req, frames)  # report.json's "steps" stays the user's
        result = run_adaptive(models, frames, with_texts, cfg, notes)
        result.report["step_texts"] = texts  # where Delta_sem's texts came from
        timings["adaptive_s"] = round(time.perf_counter() - t0, 3)
    final = result.images if result is not None else frames
    settings = dict(base=portable(req.base), frames=frames_n, rows=rows, cols=cols, resolution=resolution)
    report = generation_report(req, models, settings, used, notes, result, timings)
    write_sample(req.out, grid, final, captions_for(result, req.steps, len(final)), report)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {req.out}/ ({len(final)} frames: grid.png, frames/, sequence.gif, report.json, index.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
