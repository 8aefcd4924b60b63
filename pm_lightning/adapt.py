"""Adaptive steps on an existing sequence: `python -m pm_lightning.adapt --frames DIR --stage2 FILE --out DIR`.

    python -m pm_lightning.adapt --frames outputs/lego/frames --stage2 runs/tiny_stage2/lora/final/lora.safetensors --out outputs/lego-adapted
    python -m pm_lightning.adapt --frames data/synth/val/lego/seq-000000 --stage2 FILE --add-floor 0.3 --out DIR

DIR's images (png, jpg, jpeg, webp) are the frames, sorted by file name. A `meta.json` beside them
(the raw sequence format: {"caption", "steps"}) gives the default prompt and step texts. Writes the
same outputs as `pm_lightning.generate` (grid.png is the input sequence).
"""

from __future__ import annotations

import argparse
import sys
import time

from pm_lightning.core import validate as v
from pm_lightning.core.errors import BadInput
from pm_lightning.core.paths import portable
from pm_lightning.core.progress import apply_progress_flag
from pm_lightning.inference.flags import common_flags

PROG = "python -m pm_lightning.adapt"


def main(argv: list[str] | None = None) -> int:
    """Parse (every flag checked before the models are imported), run, print where the outputs went; bad input
    exits with its message (exit code 2)."""
    p = v.Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument(  # dest frames_dir: a request's `frames` is a count
        "--frames",
        dest="frames_dir",
        type=v.existing_dir,
        required=True,
        help="folder of frame images (sorted by name)",
    )
    p.add_argument("--prompt", default=None, help="sequence caption for stage 2 (default: meta.json caption)")
    p.add_argument("--domain", default="unseen", help="recorded in report.json")
    common_flags(p)
    args = p.parse_args(argv)
    apply_progress_flag(args)
    try:
        return run(args)
    except (BadInput, FileNotFoundError, ValueError) as err:  # ValueError: adaptive settings that contradict
        v.refuse(PROG, err)


def run(args: argparse.Namespace) -> int:
    # after parsing: torch and the inference stack, which --help and a bad flag skip (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.inference.adaptive_settings import config_from_args
    from pm_lightning.inference.inputs import input_grid, read_frames
    from pm_lightning.inference.outputs import write_sample
    from pm_lightning.inference.request import request_from_args
    from pm_lightning.inference.runtime import runtime_from_args
    from pm_lightning.inference.session import Models, captions_for, generation_report, run_adaptive

    cfg = config_from_args(args)
    frames, meta = read_frames(args.frames_dir)
    steps = args.steps or meta.get("steps") or None
    if steps and len(steps) != len(frames):
        raise BadInput(f"{len(steps)} step texts for {len(frames)} frames: give one per frame")
    prompt = args.prompt if args.prompt is not None else meta.get("caption", "")
    req = request_from_args(args, prompt=prompt, steps=steps, adaptive=True)
    notes: list[str] = []
    models = Models(req.base, runtime_from_args(args))
    start = time.perf_counter()
    result = run_adaptive(models, frames, req, cfg, notes)
    timings = {"adaptive_s": round(time.perf_counter() - start, 3)}
    report = generation_report(req, models, {"base": portable(req.base)}, {}, notes, result, timings, mode="adapt")
    report["input"] = portable(args.frames_dir)
    write_sample(req.out, input_grid(frames), result.images, captions_for(result, steps, len(result.frames)), report)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {req.out}/ ({len(frames)} -> {len(result.frames)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
