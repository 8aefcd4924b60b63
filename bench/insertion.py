"""Stage-2 insertion quality: the frame stage 2 inserts between f_i and f_{i+2} of a real sequence vs the true f_{i+1}.

For every interior frame i+1 of K held-back synthetic sequences per domain (split seed 1, never trained on), the
tiny model with the trained stage-2 LoRA (on its fused stage-1 base) inserts one frame between f_i and f_{i+2}
(`insert_between_batch`, n=1, seed 1000 + request index, the sequence caption as prompt). It is compared with two
baselines that need no model:

* cross-fade: `Image.blend(f_i, f_{i+2}, 0.5)`;
* nearer neighbour: for one frame exactly in the middle both neighbours are equally near; we copy f_i (the earlier).

and, as a ceiling, the true f_{i+1} through the VAE (encode + decode, what any stage-2 frame has to pass through).
Metrics vs the true f_{i+1}: pixel MSE and PSNR on RGB in [0, 1], and the cosine similarity of tiny-CLIP image
embeddings; per sample, how often stage 2 beats each baseline, and the mean difference with a 95% bootstrap CI
that resamples whole sequences (the frames of one sequence are not independent).

Prints markdown and writes the "## Insertion quality" section of docs/STAGE2.md (`--doc PATH` for another file).
`--quick`: 2 domains, 1 sequence each, 2 sampler steps (the test's end-to-end run).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from docs_section import write_section  # bench/ is on sys.path when run as a script
from PIL import Image

SECTION = "## Insertion quality"
STAGE2_MD = Path(__file__).resolve().parents[1] / "docs" / "STAGE2.md"
SPLIT_SEED = 1  # the validation split's seed: sequences never trained on
SEED_BASE = 1000  # request r samples with seed SEED_BASE + r
PSNR_CAP = 100.0  # dB, for an exact match (MSE 0)
METHODS = ("stage 2", "cross-fade", "nearer neighbour (f_i)", "VAE round trip of f_{i+1} (ceiling)")
BASELINES = METHODS[1:3]
QUICK_DOMAINS = ("cake", "origami")  # one training, one held-out domain; 4 frames each: 2 insertions per sequence


# ---------------------------------------------------------------- metrics and baselines (pure)


def rgb01(image: Image.Image) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def pixel_mse(x: Image.Image, truth: Image.Image) -> float:
    """Mean squared error over RGB in [0, 1] (x resized to the truth's size when they differ)."""
    if x.size != truth.size:
        x = x.resize(truth.size, Image.Resampling.BICUBIC)
    return float(np.mean((rgb01(x) - rgb01(truth)) ** 2))


def psnr(mse: float) -> float:
    """10 log10(1 / MSE) in dB, capped at PSNR_CAP for an exact match."""
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else float(10 * np.log10(1.0 / mse))


def cross_fade(a: Image.Image, b: Image.Image) -> Image.Image:
    return Image.blend(a.convert("RGB"), b.convert("RGB"), 0.5)


def nearer_neighbour(a: Image.Image, b: Image.Image) -> Image.Image:
    """The neighbour nearer to the middle frame: both are one step away, so the earlier one, f_i."""
    return a.convert("RGB")


def baselines(a: Image.Image, b: Image.Image) -> dict[str, Image.Image]:
    return {BASELINES[0]: cross_fade(a, b), BASELINES[1]: nearer_neighbour(a, b)}


def bootstrap_ci(
    diffs: np.ndarray, clusters: np.ndarray, reps: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `diffs` and a 95% percentile CI resampling whole clusters (sequences)."""
    diffs, clusters = np.asarray(diffs, dtype=np.float64), np.asarray(clusters)
    ids = np.unique(clusters)
    sums = np.array([diffs[clusters == c].sum() for c in ids])
    counts = np.array([(clusters == c).sum() for c in ids])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(reps, len(ids)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diffs.mean()), float(low), float(high)


# ---------------------------------------------------------------- the samples


@dataclass
class Sample:
    """One insertion: f_i, f_{i+2}, the true f_{i+1} and the caption, plus its group and sequence id."""

    group: str
    domain: str
    sequence: str
    i: int
    a: Image.Image
    truth: Image.Image
    b: Image.Image
    caption: str
    candidates: dict[str, Image.Image] = field(default_factory=dict)
    vae_truth: Image.Image | None = None  # VAE(f_{i+1}): the truth inside the VAE's reach
    vae_candidates: dict[str, Image.Image] = field(default_factory=dict)  # the baselines made from VAE'd neighbours


def collect(domains: dict[str, list[str]], per_domain: int, size: int) -> list[Sample]:
    """Every (f_i, f_{i+1}, f_{i+2}) of `per_domain` split-seed-1 sequences of each domain, grouped."""
    from pm_lightning.data.synthetic_corpus import generate_sequence, sequence_seed

    out = []
    for group, names in domains.items():
        for domain in names:
            for k in range(per_domain):
                seq = generate_sequence(domain, sequence_seed(SPLIT_SEED, domain, k), size)
                for i in range(len(seq.frames) - 2):
                    f = seq.frames
                    out.append(Sample(group, domain, f"{domain}/{k}", i, f[i], f[i + 1], f[i + 2], seq.caption))
    return out


def score(samples: list[Sample], enc) -> dict[str, dict[str, np.ndarray]]:
    """{method: {"mse", "psnr", "clip", "vae_mse"}: per-sample arrays} for the methods every sample's candidates
    have ("clip" only with an encoder, "vae_mse" only when every sample has its VAE'd frames)."""
    methods = [m for m in METHODS if all(m in s.candidates for s in samples)]
    truth = enc.image_embeddings([s.truth for s in samples]) if enc is not None else None
    out = {}
    for m in methods:
        mse = np.array([pixel_mse(s.candidates[m], s.truth) for s in samples])
        res = {"mse": mse, "psnr": np.array([psnr(v) for v in mse])}
        if all(s.vae_truth is not None and m in s.vae_candidates for s in samples):
            res["vae_mse"] = np.array([pixel_mse(s.vae_candidates[m], s.vae_truth) for s in samples])
        if enc is not None:
            emb = enc.image_embeddings([s.candidates[m] for s in samples])
            res["clip"] = (emb * truth).sum(-1).double().numpy()
        out[m] = res
    return out


def group_tables(samples: list[Sample], scores: dict[str, dict[str, np.ndarray]]) -> tuple[str, str]:
    """(per-method table, stage 2 vs each baseline table) as markdown for the given samples."""
    clusters = np.array([s.sequence for s in samples])
    rows = ["| method | MSE | PSNR (dB) | CLIP cosine | MSE in VAE space |", "|---|---:|---:|---:|---:|"]
    for m, res in scores.items():
        clip = f"{res['clip'].mean():.4f}" if "clip" in res else "-"
        vae = f"{res['vae_mse'].mean():.5f}" if "vae_mse" in res else "-"
        rows.append(f"| {m} | {res['mse'].mean():.5f} | {res['psnr'].mean():.2f} | {clip} | {vae} |")
    vs = [
        "| stage 2 vs | wins on MSE | MSE diff (stage 2 - baseline) [95% CI] | wins on CLIP "
        "| CLIP diff (stage 2 - baseline) [95% CI] |",
        "|---|---:|---|---:|---|",
    ]
    if "stage 2" in scores:
        s2 = scores["stage 2"]
        for m in BASELINES:
            cells = [m]
            for key, better in (("mse", np.less), ("clip", np.greater)):
                if key not in s2:
                    cells += ["-", "-"]
                    continue
                d = s2[key] - scores[m][key]
                wins = better(s2[key], scores[m][key]).mean()
                mean, low, high = bootstrap_ci(d, clusters)
                fmt = ".5f" if key == "mse" else ".4f"
                cells += [f"{wins:.0%}", f"{mean:+{fmt}} [{low:+{fmt}}, {high:+{fmt}}]"]
            vs.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows), "\n".join(vs)


def verdict(scores: dict[str, dict[str, np.ndarray]]) -> str:
    """One line: does stage 2 beat each baseline on mean MSE and mean CLIP, and is the VAE alone already worse?"""
    s2 = scores[METHODS[0]]
    parts = []
    for m in BASELINES:
        mse = "yes" if s2["mse"].mean() < scores[m]["mse"].mean() else "no"
        clip = ("yes" if s2["clip"].mean() > scores[m]["clip"].mean() else "no") if "clip" in s2 else "-"
        parts.append(f"vs {m}: MSE {mse}, CLIP {clip}")
    line = "Stage 2 better on the mean, " + "; ".join(parts) + "."
    ceiling = scores.get(METHODS[3])
    if ceiling is not None:
        worse = [m for m in BASELINES if ceiling["mse"].mean() > scores[m]["mse"].mean()]
        if worse:
            line += (
                f" The true f_{{i+1}} through the VAE alone has a higher MSE ({ceiling['mse'].mean():.5f}) than "
                + " and ".join(f"the {m} ({scores[m]['mse'].mean():.5f})" for m in worse)
                + ": in pixels, no frame stage 2 decodes can be expected to beat "
                + ("them" if len(worse) > 1 else "it")
                + " with this VAE."
            )
    return line


# ---------------------------------------------------------------- the run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-domain", type=int, default=8, help="sequences per domain (split seed 1)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps")
    p.add_argument("--max-batch", type=int, default=8, help="insertions per sampler call")
    p.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_DOMAINS)}, 1 sequence each, 2 steps")
    p.add_argument("--doc", type=Path, default=STAGE2_MD, help="markdown file whose section is replaced")
    p.add_argument("--no-write-doc", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the command line in the doc
    if args.quick:
        args.per_domain, args.steps = 1, 2
    return args


def stage_cell() -> int:
    """The cell (frame size, px) of the tiny stage-2 config: the frames are rendered at this size."""
    from pm_lightning.core.config_files import load_config
    from pm_lightning.core.paths import experiment_config

    cfg = load_config(experiment_config("tiny_stage2"))
    return int(cfg["model"]["init_args"]["cell"])


def run(args: argparse.Namespace) -> dict | None:
    """The benchmark: {"section": markdown, "results": {group: score(...)}}; None when a LoRA file is missing."""
    torch.set_num_threads(1)
    from pm_lightning.data.synthetic_corpus import HELDOUT_DOMAINS, TRAIN_DOMAINS
    from pm_lightning.inference.reference_sampling import insert_between_batch, to_pil, to_tensor
    from pm_lightning.inference.tiny_defaults import default_lora, fused_stage1

    stage2, fuse = default_lora("stage2"), fused_stage1("stage2")
    missing = [str(f) for f in (fuse, stage2) if f is None or not Path(f).is_file()]
    if missing:
        print(
            f"missing stage-2 LoRA files: {', '.join(missing)}; `make train-stage2` writes them "
            "(it runs `make train-stage1` first when the stage-1 file is missing)",
            file=sys.stderr,
        )
        return None

    t0 = time.perf_counter()
    cell = stage_cell()
    if args.quick:
        domains = {
            "training domains": [d for d in QUICK_DOMAINS if d in TRAIN_DOMAINS],
            "held-out domains": [d for d in QUICK_DOMAINS if d in HELDOUT_DOMAINS],
        }
    else:
        domains = {"training domains": list(TRAIN_DOMAINS), "held-out domains": list(HELDOUT_DOMAINS)}
    samples = collect(domains, args.per_domain, cell)

    from pm_lightning.inference.session import Models
    from pm_lightning.models.encoders import Encoders

    backbone = Models("tiny").use(fuse, stage2)
    enc = Encoders.load(clip="tiny", dino="tiny")
    t_load = time.perf_counter() - t0

    # stage 2: one batched call per caption (the prompt is per call), seeds by global request index
    t1 = time.perf_counter()
    by_caption: dict[str, list[int]] = {}
    for r, s in enumerate(samples):
        by_caption.setdefault(s.caption, []).append(r)
    for caption, idx in by_caption.items():
        frames = insert_between_batch(
            backbone,
            [(samples[r].a, samples[r].b, 1) for r in idx],
            caption,
            [SEED_BASE + r for r in idx],
            cell,
            args.steps,
            1.0,
            args.max_batch,
        )
        for r, (frame,) in zip(idx, frames):
            samples[r].candidates[METHODS[0]] = frame
    t_sample = time.perf_counter() - t1

    @torch.no_grad()
    def vae(images: list[Image.Image]) -> list[Image.Image]:
        """decode(encode(frame)) for each frame on its own, as stage 2 encodes its references / decodes its cells."""
        out = []
        for lo in range(0, len(images), 32):
            x = torch.stack([to_tensor(im, cell) for im in images[lo : lo + 32]]).to(backbone.device, backbone.dtype)
            out += [to_pil(y) for y in backbone.decode_latents(backbone.encode_images(x))]
        return out

    va, vt, vb = (vae([getattr(s, k) for s in samples]) for k in ("a", "truth", "b"))
    for s, a, t, b in zip(samples, va, vt, vb):
        s.candidates.update(baselines(s.a, s.b))
        s.candidates[METHODS[3]] = s.vae_truth = t
        s.vae_candidates = {**baselines(a, b), METHODS[0]: s.candidates[METHODS[0]], METHODS[3]: t}

    parts = []
    results = {}
    for group in domains:
        sub = [s for s in samples if s.group == group]
        if not sub:
            continue
        sc = score(sub, enc)
        results[group] = sc
        per_method, vs = group_tables(sub, sc)
        n_seq = len({s.sequence for s in sub})
        parts.append(
            f"### {group.capitalize()} ({', '.join(domains[group])}): {len(sub)} insertions in {n_seq} "
            f"sequence{'s' * (n_seq != 1)}\n\n"
            f"{per_method}\n\n{vs}\n\n{verdict(sc)}"
        )
    wall = time.perf_counter() - t0
    body = "\n\n".join(parts)
    print(body)
    cmd = " ".join(["OMP_NUM_THREADS=1 .venv/bin/python bench/insertion.py", *args.argv])
    section = (
        f"{SECTION}\n\n"
        f"Command: `{cmd}`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, {platform.machine()}, "
        f"torch {torch.__version__}, 1 thread, {wall:.0f} s in all ({t_load:.0f} s loading, {t_sample:.0f} s "
        f"sampling). Models: the tiny Flux with `{fuse.relative_to(STAGE2_MD.parents[1])}` fused and "
        f"`{stage2.relative_to(STAGE2_MD.parents[1])}` loaded. Samples: for {args.per_domain} "
        f"sequence{'s' * (args.per_domain != 1)} per domain "
        f"of split seed {SPLIT_SEED} (never trained on), rendered at the stage-2 cell size ({cell} px), every i: "
        f"stage 2 inserts one frame between f_i and f_{{i+2}} (`insert_between_batch`, n=1, {args.steps} steps, "
        f"guidance 1, seed {SEED_BASE} + request index, the sequence caption as prompt); the cross-fade is "
        "`Image.blend(f_i, f_{i+2}, 0.5)`; the nearer neighbour of a frame exactly in the middle is ambiguous, "
        "we copy f_i (the earlier one); the ceiling row is the true f_{i+1} through the VAE (encode + decode), "
        "which any stage-2 frame passes through. Metrics vs the true f_{i+1}: pixel MSE and PSNR on RGB in "
        f"[0, 1] (per-sample PSNR averaged, capped at {PSNR_CAP:.0f} dB), cosine similarity of tiny-CLIP image "
        'embeddings; "MSE in VAE space" takes the VAE out of the comparison: every method against '
        "VAE(f_{i+1}), the baselines made from VAE(f_i) and VAE(f_{i+2}) (the references stage 2 sees). "
        "Wins: share of insertions where stage 2 is strictly better (lower MSE / higher CLIP); "
        "diffs: mean of stage 2 minus the baseline, 95% bootstrap CI resampling whole sequences (2000 draws).\n\n"
        + body
        + "\n"
    )
    if not args.no_write_doc:
        write_section(section, args.doc)
        print(f"wrote the Insertion quality section of {args.doc}", file=sys.stderr)
    return {"section": section, "results": results}


def main(argv=None) -> int:
    """Exit status: 0, or 2 when the stage-2 LoRA files are missing."""
    return 0 if run(parse_args(argv)) is not None else 2


if __name__ == "__main__":
    sys.exit(main())
