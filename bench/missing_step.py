"""A stage-1 grid with a missing step, repaired by the adaptive steps: is a frame inserted where the step is missing?

For every prompt (the training domains' and the held-out domains' validation captions, K per domain),
`python -m pm_lightning.generate` draws a 9-frame stage-1 grid with the trained tiny LoRAs; one interior frame k
(drawn at random, seeded) is removed, and `python -m pm_lightning.adapt` (the second half of
`generate --adaptive`: the same `run_adaptive`) runs one round on the 8 frames left with the trained stage-2 LoRA.

Rows: the calibrated settings `generate --adaptive` uses for the tiny evaluators
(`data/tiny-eval/adaptive_calibration.json`), and the paper's relative rule alone (`--add-floor 0.0001 --del-ceiling 0
--k1 1.0`: insert wherever Delta > mu + sigma, delete nothing). Columns: how often a frame is inserted at the gap (pair k-1, k), how often the
gap pair has the largest Delta of the sequence (the signal, before any rule), and how often an edit lands
elsewhere. Prints markdown and writes the "## Missing step in a stage-1 grid" section of docs/ADAPTIVE.md.

    python bench/missing_step.py                 # K=3 per domain, 27 grids
    python bench/missing_step.py --quick         # 2 domains, 1 grid, 2 sampler steps (the test's run)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from docs_section import write_section  # bench/ is on sys.path when run as a script

SECTION = "## Missing step in a stage-1 grid"
ADAPTIVE_MD = Path(__file__).resolve().parents[1] / "docs" / "ADAPTIVE.md"
RELATIVE_ONLY = "--add-floor 0.0001 --del-ceiling 0 --k1 1.0".split()
ROWS = {"calibrated (what generate --adaptive uses)": [], "insert where Delta > mu + sigma, no floor": RELATIVE_ONLY}
QUICK_DOMAINS = ("cake", "origami")


def prompts(per_domain: int, domains) -> list[tuple[str, str]]:
    """(domain, caption) of validation sequences (split seed 1, never trained on)."""
    from pm_lightning.data.synthetic_corpus import generate_sequence, sequence_seed

    return [(d, generate_sequence(d, sequence_seed(1, d, i), 16).caption) for d in domains for i in range(per_domain)]


def gap_outcome(report: dict, gap: int) -> dict:
    """From adapt's report.json: inserted at the gap pair, gap pair has the largest Delta, edits elsewhere."""
    rnd = report["adaptive"]["rounds"][0]
    applied = [d for d in rnd["decisions"] if d["applied"]]
    inserted = {d["pair"] for d in applied if d["action"] == "insert"}
    deltas = [p["delta"] for p in rnd["pairs"]]
    return {
        "inserted_at_gap": gap in inserted,
        "gap_is_largest": max(range(len(deltas)), key=deltas.__getitem__) == gap,
        "edits_elsewhere": len(applied) - (gap in inserted) > 0,
    }


def run(args) -> dict:
    from pm_lightning import adapt, generate
    from pm_lightning.data.synthetic_corpus import DOMAINS

    domains = QUICK_DOMAINS if args.quick else tuple(DOMAINS)
    rng = random.Random(args.seed)
    common = ["--base", args.base, "--num-inference-steps", str(args.steps)]
    cases, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for c, (domain, caption) in enumerate(prompts(args.per_domain, domains)):
            grid = Path(tmp) / f"grid{c}"
            generate.main(
                [
                    *common,
                    "--prompt",
                    caption,
                    "--domain",
                    domain,
                    "--frames",
                    "9",
                    "--seed",
                    str(c),
                    "--out",
                    str(grid),
                ]
            )
            frames = sorted((grid / "frames").iterdir())
            k = rng.randrange(1, len(frames) - 1)
            missing = Path(tmp) / f"missing{c}"
            missing.mkdir()
            for j, f in enumerate(p for i, p in enumerate(frames) if i != k):
                (missing / f"{j:02d}.png").write_bytes(f.read_bytes())
            (missing / "meta.json").write_text(json.dumps({"caption": caption}))
            case = {"domain": domain, "prompt": caption, "removed": k, "gap": k - 1}
            for r, (row, flags) in enumerate(ROWS.items()):
                out = Path(tmp) / f"adapted{c}-{r}"
                adapt.main(
                    [
                        *common,
                        "--frames",
                        str(missing),
                        "--stage2",
                        str(args.stage2),
                        "--max-rounds",
                        "1",
                        *flags,
                        "--out",
                        str(out),
                    ]
                )
                case[row] = gap_outcome(json.loads((out / "report.json").read_text()), k - 1)
            cases.append(case)
            print(f"{c + 1}/{len(domains) * args.per_domain} {domain}: removed frame {k}", file=sys.stderr)
    return {"cases": cases, "seconds": round(time.perf_counter() - start, 1), "sampler_steps": args.steps}


def table(result: dict) -> str:
    cases = result["cases"]
    lines = [
        f"| settings (n={len(cases)} grids) | frame inserted at the gap | gap pair has the largest Delta | edits elsewhere |",
        "|---|---:|---:|---:|",
    ]
    for row in ROWS:
        rates = {
            k: sum(c[row][k] for c in cases) / len(cases)
            for k in ("inserted_at_gap", "gap_is_largest", "edits_elsewhere")
        }
        lines.append(f"| {row} | " + " | ".join(f"{100 * rates[k]:.0f}%" for k in rates) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from pm_lightning.inference.tiny_defaults import default_lora

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="tiny")
    p.add_argument("--stage2", type=Path, default=None, help="stage-2 LoRA (default: make train-stage2's)")
    p.add_argument("--per-domain", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="sampler steps for grids and insertions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--doc", type=Path, default=ADAPTIVE_MD, help="markdown file whose section is rewritten")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.per_domain, args.steps = 1, 2
    args.stage2 = args.stage2 or default_lora("stage2")
    if not args.stage2.is_file():
        raise SystemExit(f"error: no stage-2 LoRA at {args.stage2}: run `make train-stage2` first (or give --stage2)")
    import torch

    torch.set_num_threads(1)
    result = run(args)
    md = table(result)
    print(md)
    if not args.no_doc:
        section = (
            f"{SECTION}\n\n`python bench/missing_step.py{' --quick' if args.quick else ''}`: {len(result['cases'])} "
            f"stage-1 grids of 9 frames ({args.per_domain} validation caption(s) per domain, every domain), one interior "
            f"frame removed at random, then one round of `adapt` with the stage-2 LoRA; {args.steps} sampler steps; "
            f"{result['seconds']} s on one CPU thread.\n\n{md}\n"
        )
        write_section(section, args.doc)
    return result


if __name__ == "__main__":
    main()
