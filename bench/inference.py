"""Steady-state inference benchmark (`make bench`): text -> grid -> adaptive sequence, batched insertions, and
diffusers' step caches, models loaded once, medians over repeats, ratios measured side by side in one run.

1. The full path (stage-1 grid, then adaptive steps with stage-2 insertions) vs the stage-1 grid alone, on 9-frame
   grids: with the calibrated guards (what `generate --adaptive` does) and with guards that force insertions,
   the latter with the insertions of a round sampled one by one vs in one batch.
2. Each cache mode vs none, on stage-1 grids and on stage-2 insertions: the speed-up, and the quality cost as the
   change of the tiny CLIP score (grids against their prompts, same seeds) and of the adaptive decisions.

Uses the tiny Flux (data/tiny-flux) and the trained tiny LoRA files under runs/ when `make train-stage1` /
`make train-stage2` wrote them (the report says which). Prints markdown and writes the "Inference" section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from docs_section import BENCH_MD, write_section  # bench/ is on sys.path when run as a script

SECTION = "## Inference"
PROMPTS = [  # 9-frame domains (3x3 grids), from experiments/tiny.yaml
    ("lego", "a lego tower of eight red bricks on a green baseplate"),
    ("painting", "an oil painting of two trees on green fields under a blue sky"),
    ("garden", "a garden of four yellow flowers"),
]


def timed(fn, repeats: int):
    """(median seconds over `repeats` calls after one warm-up, the last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="sampler steps")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt for the quality figures")
    p.add_argument("--no-write-doc", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    from pm_lightning.data.grid import grid_to_frames
    from pm_lightning.eval.scores import clip_score
    from pm_lightning.inference.adaptive import EncoderScorer, adapt_sequence
    from pm_lightning.inference.adaptive_rule import AdaptiveConfig
    from pm_lightning.inference.cache import CacheConfig
    from pm_lightning.inference.session import Models, make_insert_fn, sample_grid
    from pm_lightning.inference.tiny_defaults import default_lora, fused_stage1
    from pm_lightning.models.encoders import Encoders

    t0 = time.perf_counter()
    stage1, stage2, fuse = default_lora("stage1", "lego"), default_lora("stage2"), fused_stage1("stage2")
    have = stage1.is_file() and stage2.is_file() and fuse is not None and fuse.is_file()
    grid_models, insert_models = Models("tiny"), Models("tiny")
    grid_backbone = grid_models.use(None, stage1 if have else None)
    insert_backbone = insert_models.use(fuse if have else None, stage2 if have else None)
    enc = Encoders.load(clip="tiny", dino="tiny")
    scorer = EncoderScorer(enc)
    caches = {
        "none": CacheConfig(),
        "first-block 0.1": CacheConfig("first-block", threshold=0.1),
        "first-block 0.2 (default)": CacheConfig("first-block", threshold=0.2),
        "first-block 0.3": CacheConfig("first-block", threshold=0.3),
        "taylorseer 5/3 (diffusers' default)": CacheConfig("taylorseer", interval=5, warmup=3),
        "taylorseer 6/1 (default)": CacheConfig("taylorseer", interval=6, warmup=1),
    }
    calibrated = AdaptiveConfig()
    forced = AdaptiveConfig(add_floor=0.001, del_ceiling=0.0, max_rounds=2)

    def grid(prompt, seed, cache=None):
        return sample_grid(grid_backbone, prompt, 192, args.steps, 1.0, seed, cache)

    def adaptive(frames, prompt, cfg, batch, cache=None, seed=0):
        fn = make_insert_fn(insert_backbone, prompt, 64, args.steps, 1.0, seed, max_batch=batch, cache=cache)
        return adapt_sequence(frames, scorer, cfg=cfg, insert_batch=fn)

    prompt = PROMPTS[0][1]
    grid_s, g = timed(lambda: grid(prompt, 0), args.repeats)
    frames = grid_to_frames(g, 3, 3)
    rows = [["stage-1 grid alone (192 px, 3x3)", f"{grid_s:.2f}", "1.00x", ""]]
    fast = CacheConfig("first-block", threshold=0.2)
    for label, cfg, batch, cache in (
        ("calibrated guards", calibrated, 8, None),
        ("forced insertions, one by one", forced, 1, None),
        ("forced insertions, batched per round", forced, 8, None),
        ("forced insertions, batched, first-block 0.2 on grid and insertions", forced, 8, fast),
    ):
        if cache is not None:
            gs, g2 = timed(lambda cache=cache: grid(prompt, 0, cache), args.repeats)
        else:
            gs, g2 = grid_s, g
        f2 = grid_to_frames(g2, 3, 3)
        s, res = timed(
            lambda cfg=cfg, batch=batch, cache=cache, f2=f2: adaptive(f2, prompt, cfg, batch, cache), args.repeats
        )
        inserted = sum(
            d["n"] for r in res.report["rounds"] for d in r["decisions"] if d["applied"] and d["action"] == "insert"
        )
        rows.append(
            [
                f"grid + adaptive, {label}",
                f"{gs + s:.2f}",
                f"{(gs + s) / grid_s:.2f}x",
                f"{inserted} frames inserted, {len(res.report['rounds'])} rounds",
            ]
        )

    # cache modes: speed on grids and insertions, quality on grids (CLIP) and decisions (forced guards, same seeds)
    cache_rows = []
    base_quality, base_decisions = None, None
    pair = (frames[2], frames[5], 2)
    for name, cache in caches.items():
        gs, _ = timed(lambda cache=cache: grid(prompt, 0, cache), args.repeats)
        fn = make_insert_fn(insert_backbone, prompt, 64, args.steps, 1.0, 0, cache=cache)
        ins, _ = timed(lambda fn=fn: fn([pair]), args.repeats)
        grids, captions = [], []
        for _, text in PROMPTS:
            for seed in range(args.seeds):
                grids.append(grid(text, seed, cache))
                captions.append(text)
        quality = clip_score(enc.image_embeddings(grids), enc.text_embeddings(captions)).mean().item()
        res = adaptive(frames, prompt, forced, 8, cache)
        decisions = [
            (d["action"], d["pair"], d.get("n")) for r in res.report["rounds"] for d in r["decisions"] if d["applied"]
        ]
        if base_quality is None:
            base_quality, base_decisions, base_grid, base_ins = quality, decisions, gs, ins
        same = sum(a == b for a, b in zip(decisions, base_decisions)) if base_decisions else 0
        cache_rows.append(
            [
                name,
                f"{gs:.2f}",
                f"{base_grid / gs:.2f}x",
                f"{ins:.3f}",
                f"{base_ins / ins:.2f}x",
                f"{quality:.2f}",
                f"{quality - base_quality:+.2f}",
                f"{same}/{max(len(base_decisions), len(decisions))}",
            ]
        )

    table1 = "\n".join(
        ["| path | seconds | vs grid | what happened |", "|---|---:|---:|---|"]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    table2 = "\n".join(
        [
            "| cache | grid s | grid speed-up | insertion s | insertion speed-up | CLIP score | change | decisions as none |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        + ["| " + " | ".join(r) + " |" for r in cache_rows]
    )
    print(table1 + "\n\n" + table2)
    models = (
        "the trained tiny LoRA files (stage 1 lego, stage 2 on its fused stage-1 base)"
        if have
        else "the plain tiny base (no trained LoRA files under runs/)"
    )
    section = (
        f"{SECTION}\n\nCommand: `python bench/inference.py` (in `make bench`), {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}, 1 thread, "
        f"{time.perf_counter() - t0:.0f} s in all. Models: {models}; loaded once. Medians of {args.repeats} runs after a "
        f"warm-up; {args.steps} sampler steps; insertions are 2x2 grids of 64-px cells. Quality: mean tiny-CLIP score of "
        f"{len(PROMPTS) * args.seeds} grids ({len(PROMPTS)} prompts x {args.seeds} seeds, the same seeds for every cache); "
        "decisions: the applied adaptive edits (forced guards) compared with the uncached run's.\n\n"
        + table1
        + "\n\n"
        + table2
        + "\n"
    )
    if not args.no_write_doc:
        write_section(section)
        print(f"wrote the Inference section of {BENCH_MD}", file=sys.stderr)


if __name__ == "__main__":
    main()
