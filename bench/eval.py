"""Evaluation benchmark (`make bench`): scoring throughput of the embedded tiny evaluators.

Grids/s for the CLIP score on whole grids, for the CLIP score on grid + every frame
(`grid_and_frame_clip_scores`), and for DINO patch tokens of every frame of a grid (the
adaptive-steps input), at 192 px grids (3x3 of 64 px) and 1024 px grids (2x2 of 512 px).
Preprocessing (PIL resize to 64 px, normalisation) is included: it is part of scoring.
Prints a markdown table and writes it into the "Evaluation" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from docs_section import BENCH_MD, write_section  # bench/ is on sys.path when run as a script

from pm_lightning.data.grid import frames_to_grid, layout_for
from pm_lightning.data.synthetic_corpus import TRAIN_DOMAINS, generate_sequence
from pm_lightning.eval.scores import clip_score, grid_and_frame_clip_scores
from pm_lightning.models.encoders import Encoders

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Evaluation"
# name: (grids, frames per grid, frame px)
CASES = {"192 px (3x3 of 64)": (32, 9, 64), "1024 px (2x2 of 512)": (16, 4, 512)}


def make_grids(count: int, frames: int, px: int) -> tuple[list, list, list]:
    """(grids, frame lists, prompts) of synthetic sequences with `frames` frames."""
    domains = [d for d in TRAIN_DOMAINS if len(generate_sequence(d, 0, 16).frames) == frames]
    seqs = [generate_sequence(domains[i % len(domains)], i, px) for i in range(count)]
    return (
        [frames_to_grid(s.frames, *layout_for(frames)) for s in seqs],
        [s.frames for s in seqs],
        [s.caption for s in seqs],
    )


def rate(fn, items: int, min_seconds: float) -> float:
    """Items per second of repeated fn() calls lasting at least min_seconds (after one warm-up call)."""
    fn()
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or done == 0:
        fn()
        done += items
    return done / elapsed


def bench_case(enc: Encoders, spec: tuple, min_seconds: float) -> dict:
    """The three throughputs for one grid size."""
    count, frames, px = spec
    grids, frame_lists, prompts = make_grids(count, frames, px)
    flat = [f for fs in frame_lists for f in fs]
    return {
        "grid": rate(lambda: clip_score(enc.image_embeddings(grids), enc.text_embeddings(prompts)), count, min_seconds),
        "grid_frames": rate(lambda: grid_and_frame_clip_scores(enc, grids, frame_lists, prompts), count, min_seconds),
        "patches": rate(lambda: enc.patch_tokens(flat), count, min_seconds),
        "frames": frames,
    }


def table(rows: dict[str, dict]) -> str:
    """Markdown table of the figures."""
    lines = [
        "| grids | CLIP score, grid only (grids/s) | CLIP score, grid + frames (grids/s) | DINO patch tokens, every frame (grids/s) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['grid']:.1f} | {r['grid_frames']:.1f} | {r['patches']:.1f} ({r['patches'] * r['frames']:.0f} frames/s) |"
        )
    return "\n".join(lines)


def main() -> None:
    """Measure every case, print the table, record it in docs/BENCHMARKS.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timing window per figure")
    p.add_argument("--no-write-doc", action="store_true", help="print only")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    enc = Encoders.load(clip="tiny", dino="tiny")
    rows = {name: bench_case(enc, spec, args.seconds) for name, spec in CASES.items()}
    md = table(rows)
    print(md)
    section = (
        f"{SECTION}\n\n"
        f"Command: `make bench` (= `python bench/eval.py`), {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores "
        f"(shared with other jobs), {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"1 thread, {time.perf_counter() - start:.0f} s in all.\n\n"
        'The embedded tiny evaluators (`Encoders.load(clip="tiny", dino="tiny")`: the tiny open_clip CLIP at 64 px '
        "and its visual tower's 8x8 patch tokens), batches of up to 64 images, fp32 CPU. Each figure includes PIL "
        "preprocessing (resize to 64 px, normalisation) and, for CLIP scores, the text embedding of each grid's prompt; "
        "at 1024 px most of the time is the PIL resize. Grid + frames embeds the grid and each of its frames (10 or 5 "
        "images per grid); patch tokens are computed for every frame of a grid.\n\n" + md + "\n"
    )
    if not args.no_write_doc:
        write_section(section)
        print(f"wrote the Evaluation section of {BENCH_MD}", file=sys.stderr)


if __name__ == "__main__":
    main()
