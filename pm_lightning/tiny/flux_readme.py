"""data/tiny-flux/README.md, written from the training log so its numbers are the run's own."""

from __future__ import annotations

from pathlib import Path


def _row(d: dict) -> str:
    return ", ".join(f"{k} px: {v}" if k.isdigit() else f"{k}: {v}" for k, v in d.items())


def readme_text(log: dict) -> str:
    """Markdown describing how the directory was made and how well it fits."""
    vae, tr, val, cfg = log["vae"], log["transformer"], log["validation"], log["config"]
    params = log.get("params", {})
    history = "\n".join(
        f"| {h['step']} | " + " | ".join(str(h.get(s, "")) for s in map(str, sorted(cfg["pools"], key=int))) + " |"
        for h in tr["loss_history"]
    )
    sizes = sorted(cfg["pools"], key=int)
    return f"""# tiny-flux: the embedded default Flux base

A diffusers-format FluxPipeline directory (`model_index.json`, `transformer/`, `vae/`, `text_encoder/`,
`text_encoder_2/`, `tokenizer/`, `tokenizer_2/`, `scheduler/`) that stock `diffusers.FluxPipeline.from_pretrained`
loads. Every weight here was produced by `pm_lightning/tiny_base.py` on CPU from the synthetic corpus
(`pm_lightning/data/synth.py`): single frames of every domain, the held-out ones (origami, mosaic) included, as
FLUX.1-dev knows what origami looks like; no grid and no sequence order of a held-out domain is ever trained on.
Sample with `max_sequence_length={_t5_len(log)}` and `guidance_scale=1.0` (as trained).

## How it was made

- command: `{log["command"]}` (`make tiny-base` runs it with the default `--threads 2`), seed {log["seed"]},
  {log["threads"]} torch thread(s)
- total time: {log["total_seconds"]} s ({log["total_seconds"] / 60:.1f} min) on a 2-core CPU
- training frames per canvas size: {_row(log["frames"])}; validation frames (corpus split seed 1, never trained on): {_row(log["val_frames"])}

| component | class | parameters |
|---|---|---|
| transformer | FluxTransformer2DModel (2 double + 4 single blocks) | {params.get("transformer", "?"):,} |
| vae | AutoencoderKL (16 latent channels, 8x) | {params.get("vae", "?"):,} |
| text_encoder | CLIPTextModel (pooled output) | {params.get("text_encoder", "?"):,} |
| text_encoder_2 | T5EncoderModel | {params.get("text_encoder_2", "?"):,} |

Directory size: {log["size_mb"]} MB (fp32 safetensors).

### 1. VAE
{vae["vae_steps"]} steps, batch {cfg["vae_batch"]} random {cfg["vae_crop"]} px crops of frames rendered at {", ".join(map(str, sizes))} px,
loss L1 + MSE + {cfg["kl_weight"]} KL, {vae["vae_seconds"]} s. Final training L1 {vae["vae_l1_final"]};
reconstruction L1 on validation frames (pixels in [-1, 1]): {_row(vae["val_l1"])}.
Latent statistics as Flux: `shift_factor` = mean = {vae["shift_factor"]}, `scaling_factor` = 1/std = {vae["scaling_factor"]}.

### 2. Transformer + text encoders
{tr["steps"]} steps, {tr["seconds"]} s, flow matching (x_t = (1-t) x0 + t eps, target eps - x0, t logit-normal then
Flux's resolution-dependent shift, guidance input 1.0), one canvas size per batch cycling {cfg["size_cycle"]}
with batches {_row(cfg["batches"])}; AdamW lr {cfg["lr"]}, warm-up {cfg["warmup"]}, cosine to 10%.
Captions: "<sequence caption>. step k: <step text>" (and the bare sequence caption for some final frames).
Training loss (moving average) per canvas size:

| step | {" | ".join(f"{s} px" for s in sizes)} |
|---|{"---|" * len(sizes)}
{history}

### 3. Held-out validation (flow-matching loss, same t and noise for both models)

| model | {" | ".join(f"{s} px" for s in sizes)} | mean |
|---|{"---|" * (len(sizes) + 1)}
| trained | {" | ".join(str(val["trained"][str(s)]) for s in sizes)} | {val["trained"]["mean"]} |
| untrained (random init, same architecture) | {" | ".join(str(val["untrained"][str(s)]) for s in sizes)} | {val["untrained"]["mean"]} |

{_group_table(val, sizes)}
Samples (stock FluxPipeline, 24 steps, guidance 1.0; one validation sequence per domain at
64 and 192 px, and rows where only the colour word changes): `{log.get("samples_png", "docs/tiny-flux-samples.png")}`;
details in `docs/TINY_FLUX.md`.
"""


def _group_table(val: dict, sizes: list) -> str:
    """Validation loss of the training and the held-out domains apart (builds that recorded it)."""
    groups = val.get("by_domain_group")
    if not groups:
        return ""
    rows = "\n".join(
        f"| {name.replace('_', ' ')} | " + " | ".join(str(g[str(s)]) for s in sizes) + f" | {g['mean']} |"
        for name, g in groups.items()
    )
    return f"""
By domain group (trained model, validation frames of each group):

| domains | {" | ".join(f"{s} px" for s in sizes)} | mean |
|---|{"---|" * (len(sizes) + 1)}
{rows}

"""


def _t5_len(log: dict) -> int:
    return log.get("t5_max_length", 32)


def write_readme(out: Path, log: dict) -> None:
    (Path(out) / "README.md").write_text(readme_text(log))
