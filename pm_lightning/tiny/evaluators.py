"""The embedded tiny evaluators, built and trained on CPU (the recipe behind `python -m pm_lightning.tiny_eval`).

One open_clip CLIP (built from `CLIP_CONFIG` with open_clip's own class) trained contrastively
on CPU with one seed, on 64 px frames and 3x3 / 2x2 grids of every synthetic domain, the held-out
ones included (split seed 0), paired with their captions and step captions: the evaluators play the
part of CLIP and DINOv2, which know every domain (the stage-1 / stage-2 training shards still hold no
held-out sequence: `make shards` writes them with --no-held-out). Measured on split seed 1 (never
trained on): zero-shot domain classification of frames, caption retrieval, and how well each Delta
term of a frame pair ranks the ground-truth amount of change between the frames (`eval/change_truth.py`). Writes `OUT/clip/{open_clip_config.json, open_clip_model.safetensors}` (loadable by
`open_clip.create_model_and_transforms("local-dir:OUT/clip")`), `OUT/metrics.json` and
`OUT/README.md`. The tiny DINO stand-in is this model's visual tower (see docs/EVALUATION.md).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pm_lightning.data.grid import frames_to_grid, layout_for
from pm_lightning.data.synthetic_corpus import (
    HELDOUT_DOMAINS,
    TRAIN_DOMAINS,
    Sequence,
    generate_sequence,
    sequence_seed,
)
from pm_lightning.inference.adaptive import EncoderScorer
from pm_lightning.models.encoders import Encoders
from pm_lightning.tiny.change_metric import ChangeData, change_data, change_loss

ALL_DOMAINS = (*TRAIN_DOMAINS, *HELDOUT_DOMAINS)  # what the evaluators are trained on: every domain
TRAIN_SPLIT_SEED, EVAL_SPLIT_SEED = 0, 1  # the corpus split seeds of `make shards`: 0 = train, 1 = validation
CLIP_CONFIG = {
    "embed_dim": 96,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 96, "layers": 3, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
PREPROCESS_CONFIG = {
    "size": 64,
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


@dataclass
class TinyEvalConfig:
    """Recipe of the tiny evaluators."""

    seed: int = 0
    train_per_domain: int = 200  # sequences per domain (split seed 0), every domain
    eval_per_domain: int = 30  # sequences per domain for the measurements (split seed 1)
    steps: int = 800
    batch_size: int = 96
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    grid_fraction: float = 0.15  # share of grid images among training pairs
    change_weight: float = 0.0  # weight of the change-metric loss (0: contrastive only; see docs/EVALUATION.md)
    change_sequences: int = 6  # sequences per step in the change-metric loss


def domain_phrase(domain: str) -> str:
    """Domain name as words: fabric_toy -> fabric toy."""
    return domain.replace("_", " ")


def zero_shot_prompt(domain: str) -> str:
    """The text a frame is classified against (one per domain)."""
    return f"a {domain_phrase(domain)} process"


def frame_texts(seq: Sequence, k: int) -> list[str]:
    """Texts that describe frame k: frame caption, domain + step, the step alone, the domain prompt
    (+ the caption on the last frame)."""
    step = seq.steps[k]
    texts = [
        f"{seq.caption}. step {k + 1}: {step}",
        f"a {domain_phrase(seq.domain)} process, step {k + 1}: {step}",
        step,
        zero_shot_prompt(seq.domain),
    ]
    if k == len(seq.frames) - 1:
        texts.append(seq.caption)
    return texts


def grid_texts(seq: Sequence) -> list[str]:
    """Texts that describe a whole sequence grid."""
    return [seq.caption, f"a {domain_phrase(seq.domain)} process: {seq.caption}", zero_shot_prompt(seq.domain)]


def sequence_grid(seq: Sequence):
    """The sequence's frames as a serpentine grid image."""
    return frames_to_grid(seq.frames, *layout_for(len(seq.frames)))


def render(domains, split_seed: int, count: int, size: int = 64) -> list[Sequence]:
    """`count` sequences of each domain of one corpus split."""
    return [generate_sequence(d, sequence_seed(split_seed, d, i), size) for d in domains for i in range(count)]


def training_pairs(seqs: list[Sequence], preprocess) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """Preprocessed frame and grid images, each with its candidate texts."""
    frames, frame_txt, grids, grid_txt = [], [], [], []
    for seq in seqs:
        for k, frame in enumerate(seq.frames):
            frames.append(preprocess(frame))
            frame_txt.append(frame_texts(seq, k))
        grids.append(preprocess(sequence_grid(seq)))
        grid_txt.append(grid_texts(seq))
    return torch.stack(frames).half(), torch.stack(grids).half(), [frame_txt, grid_txt]  # fp16: half the memory


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, texts: list[str], scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; pairs whose texts are equal all count as positives (soft targets)."""
    logits = scale * img @ txt.T  # (B, B)
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    tid = torch.tensor([ids[t] for t in texts])
    same = (tid[:, None] == tid[None, :]).float()  # (B, B)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def train(
    model, tokenizer, frames, grids, texts, cfg: TinyEvalConfig, log_every: int = 50, changes: ChangeData | None = None
) -> list[dict]:
    """Contrastive training (plus the change-metric loss with `changes`); returns the loss history."""
    rng = random.Random(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    n_grid = round(cfg.batch_size * cfg.grid_fraction)
    history, t0 = [], time.time()
    model.train()
    for step in range(cfg.steps):
        fi = rng.sample(range(len(frames)), cfg.batch_size - n_grid)
        gi = rng.sample(range(len(grids)), n_grid)
        images = torch.cat([frames[fi], grids[gi]]).float()  # (B, 3, 64, 64)
        batch_texts = [rng.choice(texts[0][i]) for i in fi] + [rng.choice(texts[1][i]) for i in gi]
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(batch_texts)), dim=-1)
        loss = contrastive_loss(img, txt, batch_texts, model.logit_scale.exp())
        aux = None
        if changes is not None and cfg.change_weight > 0:
            aux = change_loss(model, frames, changes, rng.sample(range(len(changes.offsets)), cfg.change_sequences))
            loss = loss + cfg.change_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == cfg.steps - 1:
            change = None if aux is None else round(aux.item(), 4)
            history.append(
                {"step": step, "loss": round(loss.item(), 4), "change_loss": change, "seconds": round(time.time() - t0)}
            )
            print(f"step {step:4d}  loss {loss.item():.4f}  change {change}  {time.time() - t0:.0f}s", file=sys.stderr)
    model.eval()
    return history


@torch.no_grad()
def measure(model, tokenizer, preprocess, seqs: list[Sequence], domains: list[str]) -> dict:
    """Zero-shot domain accuracy of every frame against one prompt per domain in `domains`."""
    prompts = F.normalize(model.encode_text(tokenizer([zero_shot_prompt(d) for d in domains])), dim=-1)
    correct: dict[str, list[int]] = {}
    for seq in seqs:
        img = F.normalize(model.encode_image(torch.stack([preprocess(f) for f in seq.frames])), dim=-1)
        pred = (img @ prompts.T).argmax(-1)
        correct.setdefault(seq.domain, []).extend((pred == domains.index(seq.domain)).tolist())
    per_domain = {d: round(sum(c) / len(c), 4) for d, c in correct.items()}
    out = {"zero_shot_per_domain": per_domain}
    for name, group in (("train", TRAIN_DOMAINS), ("heldout", HELDOUT_DOMAINS)):
        hits = [h for d in group if d in correct for h in correct[d]]
        if hits:
            out[f"zero_shot_{name}_domains"] = round(sum(hits) / len(hits), 4)
    return out


@torch.no_grad()
def retrieval(model, tokenizer, preprocess, seqs: list[Sequence]) -> dict:
    """Caption retrieval among all sequences: final frame -> caption and grid -> caption, top-1 / top-5."""
    captions = F.normalize(model.encode_text(tokenizer([s.caption for s in seqs])), dim=-1)
    out = {"retrieval_candidates": len(seqs)}
    for name, images in (("final_frame", [s.frames[-1] for s in seqs]), ("grid", [sequence_grid(s) for s in seqs])):
        img = F.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        sim = img @ captions.T  # (N, N)
        target = torch.arange(len(seqs))
        top5 = sim.topk(min(5, len(seqs)), dim=-1).indices
        out[f"{name}_to_caption_top1"] = round((sim.argmax(-1) == target).float().mean().item(), 4)
        out[f"{name}_to_caption_top5"] = round((top5 == target[:, None]).any(-1).float().mean().item(), 4)
        out[f"caption_to_{name}_top1"] = round((sim.argmax(0) == target).float().mean().item(), 4)
    return out


def build_model():
    """Random tiny open_clip CLIP from CLIP_CONFIG, with open_clip's preprocessing and tokenizer."""
    # lazy: open_clip, 8 s before tiny_eval reads its flags (docs/ARCHITECTURE.md, "Start-up")
    import open_clip

    model = open_clip.CLIP(**CLIP_CONFIG)
    preprocess = open_clip.image_transform(
        PREPROCESS_CONFIG["size"],
        is_train=False,
        mean=PREPROCESS_CONFIG["mean"],
        std=PREPROCESS_CONFIG["std"],
        interpolation="bicubic",
    )
    tokenizer = open_clip.SimpleTokenizer(context_length=CLIP_CONFIG["text_cfg"]["context_length"])
    return model, preprocess, tokenizer


def used_token_ids(tokenizer, texts) -> torch.Tensor:
    """Every token id that occurs in `texts` (plus the special tokens)."""
    return torch.unique(tokenizer(sorted(set(texts))).flatten())


def save(model, out: Path, used_tokens: torch.Tensor) -> Path:
    """open_clip local-dir format: open_clip_config.json + open_clip_model.safetensors (fp16).

    Token-embedding rows of words never seen in training were never trained (random init
    carries nothing), so they are stored as zeros: the file stays the same size on disk but
    compresses to a fraction of it in git.
    """
    clip_dir = out / "clip"
    clip_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    keep = torch.zeros(state["token_embedding.weight"].shape[0], dtype=torch.bool)
    keep[used_tokens] = True
    state["token_embedding.weight"][~keep] = 0
    save_file(state, str(clip_dir / "open_clip_model.safetensors"))
    meta = {"model_cfg": CLIP_CONFIG, "preprocess_cfg": PREPROCESS_CONFIG}
    (clip_dir / "open_clip_config.json").write_text(json.dumps(meta, indent=1) + "\n")
    return clip_dir


def build(out: Path, cfg: TinyEvalConfig, threads: int, command: str) -> dict:
    """The whole recipe; returns the metrics (also written to OUT/metrics.json and OUT/README.md)."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    t0, cpu0, load0 = time.time(), time.process_time(), os.getloadavg()[0]
    model, preprocess, tokenizer = build_model()
    seqs = render(ALL_DOMAINS, TRAIN_SPLIT_SEED, cfg.train_per_domain)
    frames, grids, texts = training_pairs(seqs, preprocess)
    all_texts = [t for group in texts for cands in group for t in cands]
    print(f"{len(frames)} frames, {len(grids)} grids in {time.time() - t0:.0f}s", file=sys.stderr)
    history = train(model, tokenizer, frames, grids, texts, cfg, changes=change_data(seqs, preprocess, cfg.seed))
    train_seconds, train_cpu_seconds = round(time.time() - t0), round(time.process_time() - cpu0)
    clip_dir = save(model, out, used_token_ids(tokenizer, all_texts))

    # lazy: change_truth imports torchmetrics, 5.2 s before tiny_eval reads its flags (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.eval.change_truth import correlations, pair_table

    enc = Encoders.load(clip="tiny", dino="tiny", device="cpu", root=out)  # measure the saved, reloaded model
    eval_train = render(TRAIN_DOMAINS, EVAL_SPLIT_SEED, cfg.eval_per_domain)
    eval_heldout = render(HELDOUT_DOMAINS, EVAL_SPLIT_SEED, cfg.eval_per_domain)
    m = enc.clip_model
    metrics = {
        "train_domains_only": measure(m, enc.tokenizer, enc.preprocess, eval_train, list(TRAIN_DOMAINS)),
        "all_domains": measure(
            m, enc.tokenizer, enc.preprocess, eval_train + eval_heldout, list(TRAIN_DOMAINS) + list(HELDOUT_DOMAINS)
        ),
        "retrieval_train_domains": retrieval(m, enc.tokenizer, enc.preprocess, eval_train),
        "retrieval_heldout_domains": retrieval(m, enc.tokenizer, enc.preprocess, eval_heldout),
        "change_heldout_domains": correlations(pair_table(EncoderScorer(enc), eval_heldout)),
        "change_train_domains": correlations(pair_table(EncoderScorer(enc), eval_train)),
    }
    size = sum(f.stat().st_size for f in clip_dir.iterdir())
    log = {
        "command": command,
        "seed": cfg.seed,
        "threads": threads,
        "config": asdict(cfg),
        "clip_config": CLIP_CONFIG,
        "train_split_seed": TRAIN_SPLIT_SEED,
        "eval_split_seed": EVAL_SPLIT_SEED,
        "train_frames": len(frames),
        "train_grids": len(grids),
        "params": sum(p.numel() for p in model.parameters()),
        "size_mb": round(size / 2**20, 2),
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "total_seconds": round(time.time() - t0),
        "load_average": [round(load0, 1), round(os.getloadavg()[0], 1)],
        "torch": torch.__version__,
        "metrics": metrics,
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(log, indent=1) + "\n")
    (out / "README.md").write_text(readme(log))
    return log


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def readme(log: dict) -> str:
    """OUT/README.md: what the files are, how they were made, what they measure."""
    m = log["metrics"]
    tr, al = m["train_domains_only"], m["all_domains"]
    rows = "\n".join(
        f"| {d} | {'held out' if d in HELDOUT_DOMAINS else 'train'} | {_pct(al['zero_shot_per_domain'].get(d))} |"
        for d in list(TRAIN_DOMAINS) + list(HELDOUT_DOMAINS)
    )
    ret = "\n".join(
        f"| {name} | {r['retrieval_candidates']} | {_pct(r['final_frame_to_caption_top1'])} | {_pct(r['final_frame_to_caption_top5'])} | "
        f"{_pct(r['grid_to_caption_top1'])} | {_pct(r['grid_to_caption_top5'])} | {_pct(r['caption_to_grid_top1'])} |"
        for name, r in (
            ("training domains", m["retrieval_train_domains"]),
            ("held-out domains", m["retrieval_heldout_domains"]),
        )
    )
    return f"""# Embedded tiny evaluators

Made by `{log["command"]}` (`make tiny-eval`): seed {log["seed"]}, CPU, {log["threads"]} thread(s), torch {log["torch"]},
{log["train_seconds"]} s wall-clock of data + training ({log["train_cpu_seconds"]} s of CPU time: the 2 cores were shared,
load average {log["load_average"][0]} at the start, {log["load_average"][1]} at the end), {log["total_seconds"]} s in all.
Do not edit by hand; rerun the command.

- `clip/open_clip_config.json`, `clip/open_clip_model.safetensors`: an open_clip `CLIP` ({log["params"]:,} parameters,
  {log["size_mb"]} MB fp16; unused token-embedding rows stored as zeros), loadable with
  `open_clip.create_model_and_transforms("local-dir:data/tiny-eval/clip")` or `Encoders.load(clip="tiny")`.
  Trained contrastively for {log["config"]["steps"]} steps (batch {log["config"]["batch_size"]}) on {log["train_frames"]} frames
  and {log["train_grids"]} grids (64 px) of every domain, held-out ones included (as CLIP knows every domain; the
  stage-1 / stage-2 training shards still hold no held-out sequence), split seed {log["train_split_seed"]}.
- The tiny patch-token encoder (`dino="tiny"`) is this model's visual tower: its 8x8 patch tokens after `ln_post`.
- `metrics.json`: the full training log and measurements.

## Measured on split seed {log["eval_split_seed"]} (never trained on), {log["config"]["eval_per_domain"]} sequences per domain

Domain classification of every frame by text prompts (CLIP's zero-shot protocol, no classifier head) against
"a <domain> process" (a training text of every domain):
{_pct(tr.get("zero_shot_train_domains"))} over the 7 training domains (7-way);
with all 9 prompts: {_pct(al.get("zero_shot_train_domains"))} on training-domain frames,
{_pct(al.get("zero_shot_heldout_domains"))} on held-out-domain frames.

| domain | split | zero-shot accuracy (9-way) |
|---|---|---:|
{rows}

Caption retrieval (each image against every caption of its group):

| group | candidates | final frame top-1 | final frame top-5 | grid top-1 | grid top-5 | caption -> grid top-1 |
|---|---:|---:|---:|---:|---:|---:|
{ret}

Does each Delta term see what changed? Spearman's rho between the term of a frame pair (i, i+g), g = 1..3, and
the ground-truth amount of change between the two frames (the elements the steps in between drew,
`Sequence.change_between`): averaged over sequences (what the adaptive steps use: their thresholds are relative
to one sequence), averaged over domains, and pooled over every pair (`eval/change_truth.py`). Delta is the
weighted sum with ProcessMaker's weights (0.6 glob, 0.2 loc, 0.2 sem).

{change_table(m)}
"""


def change_table(m: dict) -> str:
    rows = []
    for group, key in (("held-out domains", "change_heldout_domains"), ("training domains", "change_train_domains")):
        for term, name in (
            ("loc", "Delta_loc (patch Chamfer)"),
            ("glob", "Delta_glob"),
            ("sem", "Delta_sem"),
            ("delta", "Delta"),
        ):
            c = m.get(key, {}).get(term)
            if c:
                rows.append(f"| {group} | {name} | {c['per_sequence']} | {c['per_domain']} | {c['pooled']} |")
    return "| group | term | per sequence | per domain | pooled |\n|---|---|---:|---:|---:|\n" + "\n".join(rows)
