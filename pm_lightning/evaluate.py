"""Score generated samples: `python -m pm_lightning.evaluate --samples DIR [--judge] [--out results.json]`.

DIR holds sample folders (found at any depth by their `report.json`), each with `grid.png`,
`frames/` (00.png, 01.png, ...) and `report.json` with at least `prompt` and `domain`, optionally
`ground_truth` (a folder of true frames, relative to the sample folder or absolute) and `steps`.
Prints the per-domain table (and the mean over domains) as markdown and writes it as
`<out>.md` next to the JSON `<out>` (default DIR/results.json). Definitions: docs/EVALUATION.md.
"""

from __future__ import annotations

import json
import sys

from pm_lightning.core import validate as v
from pm_lightning.core.errors import BadInput
from pm_lightning.core.progress import add_progress_flag, apply_progress_flag
from pm_lightning.inference.flags import add_device_flags


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the results."""
    p = v.Parser(prog="python -m pm_lightning.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=v.existing_dir, required=True, help="folder of generated samples")
    p.add_argument(
        "--out",
        type=v.output_file,
        default=None,
        help="results JSON (default SAMPLES/results.json; markdown next to it)",
    )
    p.add_argument("--clip", default="tiny", help='"tiny", an open_clip "MODEL/PRETRAINED" or a local open_clip dir')
    p.add_argument("--dino", default="tiny", help='"tiny" or a DINOv2 hub id / local dir')
    add_device_flags(p)
    p.add_argument("--judge", action="store_true", help="also score with the GPT-4o rubric judge")
    p.add_argument("--judge-base-url", default=None, help="OpenAI-compatible endpoint (overrides OPENAI_BASE_URL)")
    p.add_argument("--judge-model", default=None, help="overrides OPENAI_MODEL (default gpt-4o)")
    p.add_argument(
        "--judge-timeout", type=v.Rule(float, 0, 3600, lo_open=True), default=None, help="seconds per judge request"
    )
    p.add_argument("--judge-cache", type=v.output_dir, default=None, help="folder for cached judge answers")
    add_progress_flag(p)
    args = p.parse_args(argv)
    apply_progress_flag(args)

    # after parsing: torch, the evaluators and the inference runtime, which --help and a bad flag skip
    # (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.eval.judge import Judge  # its openai client is imported when a judge is built
    from pm_lightning.eval.sample_table import evaluate
    from pm_lightning.inference.runtime import Runtime
    from pm_lightning.models.encoders import EncoderNotFound, Encoders

    try:
        rt = Runtime.resolve(args.device, args.dtype)
        enc = Encoders.load(clip=args.clip, dino=args.dino, device=rt.device, dtype=rt.dtype)
    except (EncoderNotFound, BadInput) as err:
        p.exit(2, f"error: {err}\n")
    judge = None
    if args.judge:
        judge = Judge.from_env(
            model=args.judge_model, base_url=args.judge_base_url, timeout=args.judge_timeout, cache_dir=args.judge_cache
        )
    results = evaluate(args.samples, enc, judge)
    out = args.out or args.samples / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(results["markdown"] + "\n")
    print(results["markdown"])
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
