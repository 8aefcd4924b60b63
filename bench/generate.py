"""Generation benchmark (`make bench`): stage-1 grid time on CPU (tiny Flux), and the cost of scoring one pair
for the adaptive steps relative to one stage-2 insertion (goal: under 5%).

Grid: `pm_lightning.generate.sample_grid` (stock FluxPipeline) at 192 px (3x3 of 64 px), 20 sampler steps.
Insertion: `insert_between(n=2)` (dual reference, 2x2 grid of 64-px cells, 20 steps). Scoring one pair:
CLIP image embeddings + patch tokens of two new frames, CLIP text embeddings of their two step texts, and the
three Delta terms (nothing cached: the loop caches frames it has seen, so in use a pair costs less).
Uses data/tiny-flux when present, else a random pipeline of the same architecture (same compute).
Prints a markdown table and writes it into the "Generation" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from docs_section import BENCH_MD, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Generation"


def tiny_base() -> tuple[str, str]:
    """(source, description): the embedded tiny Flux, or a random pipeline of its architecture."""
    from pm_lightning.core.paths import tiny_flux_dir

    if (tiny_flux_dir() / "model_index.json").is_file():
        return "tiny", "the embedded tiny Flux (data/tiny-flux)"
    from pm_lightning.tiny.flux_components import TinyFluxConfig, build_pipeline
    from pm_lightning.tiny.frame_pools import tokenizer_texts

    out = Path(tempfile.mkdtemp(prefix="tiny-flux-bench-"))
    torch.manual_seed(0)
    build_pipeline(TinyFluxConfig(), tokenizer_texts(20)).save_pretrained(out)
    return str(out), "a random pipeline of the tiny Flux architecture (data/tiny-flux missing)"


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fresh_copies(images):
    """New image objects (so the scorer's per-image cache never hits)."""
    return [im.copy() for im in images]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps")
    p.add_argument("--no-write-doc", action="store_true", help="print only")
    args = p.parse_args()
    torch.set_num_threads(1)
    from pm_lightning.data.synthetic_corpus import generate_sequence
    from pm_lightning.inference.adaptive import EncoderScorer, pair_terms
    from pm_lightning.inference.adaptive_rule import AdaptiveConfig, combine, effective_weights
    from pm_lightning.inference.reference_sampling import insert_between
    from pm_lightning.inference.session import sample_grid
    from pm_lightning.models.backbone import FluxBackbone
    from pm_lightning.models.encoders import Encoders

    start = time.perf_counter()
    source, what = tiny_base()
    backbone = FluxBackbone.from_pretrained(source)
    seq = generate_sequence("lego", 0, 64)
    grid_s = timed(lambda: sample_grid(backbone, seq.caption, 192, args.steps, 1.0, 0), args.repeats)
    insert_s = timed(
        lambda: insert_between(
            backbone, seq.frames[2], seq.frames[5], seq.caption, n=2, cell=64, num_inference_steps=args.steps
        ),
        args.repeats,
    )
    scorer = EncoderScorer(Encoders.load(clip="tiny", dino="tiny"))
    weights = effective_weights(AdaptiveConfig(), True)

    def score_pair():
        pair = fresh_copies(seq.frames[2:4])
        terms = pair_terms(scorer, pair, scorer.text_features(seq.steps[2:4]))
        return combine(terms, weights)

    pair_s = timed(score_pair, max(args.repeats, 20))
    ratio = pair_s / insert_s
    md = "\n".join(
        [
            "| figure | seconds | note |",
            "|---|---:|---|",
            f"| stage-1 grid, 192 px (3x3 of 64 px), {args.steps} steps | {grid_s:.3f} | stock FluxPipeline |",
            f"| stage-2 insertion, 2 frames (2x2 of 64 px), {args.steps} steps | {insert_s:.3f} | `insert_between(n=2)` |",
            f"| scoring one pair (glob + loc + sem), nothing cached | {pair_s:.4f} | {100 * ratio:.2f}% of one insertion "
            f"(goal < 5%: {'met' if ratio < 0.05 else 'NOT met'}) |",
        ]
    )
    print(md)
    section = (
        f"{SECTION}\n\n"
        f"Command: `make bench` (= `python bench/generate.py`), {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores "
        f"(shared with other jobs), {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
        f"{time.perf_counter() - start:.0f} s in all. Model: {what}, fp32 CPU. Median of {args.repeats} runs after a "
        f"warm-up (scoring: of {max(args.repeats, 20)}). Scoring uses the tiny evaluators (CLIP at 64 px, 8x8 patch "
        "tokens) on two new frames and two step texts; inside the adaptive loop each frame is embedded once and "
        "cached, so a round over n frames costs about n/2 such pair scores.\n\n" + md + "\n"
    )
    if not args.no_write_doc:
        write_section(section)
        print(f"wrote the Generation section of {BENCH_MD}", file=sys.stderr)


if __name__ == "__main__":
    main()
