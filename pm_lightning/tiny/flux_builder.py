"""The embedded tiny Flux base, built and pretrained on CPU (the recipe behind `python -m pm_lightning.tiny_base`).

Writes a diffusers-format FluxPipeline directory (stock `FluxPipeline.from_pretrained` loads it):
word-level tokenizers trained on the synthetic captions, then on CPU with one seed: the VAE
(reconstruction + small KL) on single frames of every domain, Flux's latent shift/scale from
its latent statistics, then the transformer and both text encoders with text-to-image flow
matching on frames at several canvas sizes. The held-out domains are in these single-frame pools
(FLUX knows origami as pictures); their processes (grids, sequences) are never trained on.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pm_lightning.data.synthetic_corpus import HELDOUT_DOMAINS, TRAIN_DOMAINS
from pm_lightning.tiny import flux_components as components
from pm_lightning.tiny import flux_pretrain as pretrain
from pm_lightning.tiny import frame_pools as corpus
from pm_lightning.tiny.flux_readme import write_readme
from pm_lightning.tiny.flux_samples import sample_sheet
from pm_lightning.training.flow import FlowConfig


def build(
    out: Path,
    cfg: pretrain.PretrainConfig,
    model_cfg: components.TinyFluxConfig,
    threads: int,
    samples_png: Path | None,
    command: str,
) -> dict:
    """The whole recipe; returns the training log (also written to `out/training_log.json`)."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    pipe = components.build_pipeline(model_cfg, corpus.tokenizer_texts())
    log = {
        "command": command,
        "seed": cfg.seed,
        "threads": threads,
        "config": _jsonable(cfg),
        "t5_max_length": model_cfg.t5_max_length,
    }

    frames, val_frames = _frame_pools(cfg, log)
    log["vae"] = _train_vae(pipe.vae, frames, val_frames, cfg)

    pools = {s: pretrain.latent_pool(pipe, p) for s, p in frames.items()}
    val_pools = {s: pretrain.latent_pool(pipe, p) for s, p in val_frames.items()}
    flow = _flow()
    log["transformer"] = pretrain.train_transformer(pipe, pools, cfg, flow)
    log["validation"] = _validation(pipe, model_cfg, val_pools, flow, cfg.seed)
    log["validation"]["by_domain_group"] = domain_group_validation(pipe, cfg)
    log["total_seconds"] = round(time.time() - t0)

    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    components.portable_tokenizer_names(out)
    log["params"] = {
        n: components.count_params(getattr(pipe, n)) for n in ("transformer", "vae", "text_encoder", "text_encoder_2")
    }
    log["size_mb"] = round(components.dir_size_mb(out), 2)
    if samples_png is not None:
        samples_png.parent.mkdir(parents=True, exist_ok=True)
        sample_sheet(out).save(samples_png)
        log["samples_png"] = str(samples_png)
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    write_readme(out, log)
    return log


def build_vae(
    out: Path, cfg: pretrain.PretrainConfig, model_cfg: components.TinyFluxConfig, threads: int, command: str
) -> dict:
    """Phases 1-2 of the recipe only: train the pipeline's VAE and its latent statistics, save it to `out`
    (an AutoencoderKL folder) with `out/training_log.json`. The same seed, initialisation and frames as `build`
    with the same configs, so the folder holds the VAE a full build would train (up to float summation order
    across thread counts); the transformer is neither trained nor saved."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    vae = components.build_pipeline(model_cfg, corpus.tokenizer_texts()).vae  # the full build's initial draws
    log = {
        "command": command,
        "seed": cfg.seed,
        "threads": threads,
        "config": _jsonable(cfg),
        "vae_config": _jsonable(model_cfg),
    }
    frames, val_frames = _frame_pools(cfg, log)
    log["vae"] = _train_vae(vae, frames, val_frames, cfg)
    log["vae"]["params"] = components.count_params(vae)
    log["total_seconds"] = round(time.time() - t0)
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out, safe_serialization=True)
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def _frame_pools(cfg: pretrain.PretrainConfig, log: dict) -> tuple[dict, dict]:
    """(training, validation) frame pools per canvas size; their sizes go into `log`."""
    starts = {size: 1000 * i for i, size in enumerate(sorted(cfg.pools))}  # disjoint sequences per size
    frames = {s: corpus.frame_pool(s, n, start=starts[s], seed=cfg.seed) for s, n in cfg.pools.items()}
    val_frames = {
        s: corpus.frame_pool(s, cfg.val_per_domain, split_seed=corpus.VAL_SPLIT_SEED, final_caption_only=0)
        for s in cfg.pools
    }
    log["frames"] = {str(s): len(p) for s, p in frames.items()}
    log["val_frames"] = {str(s): len(p) for s, p in val_frames.items()}
    return frames, val_frames


def _train_vae(vae, frames: dict, val_frames: dict, cfg: pretrain.PretrainConfig) -> dict:
    """Train the VAE, store Flux's shift/scale from its latent statistics in its config; the log entry."""
    log = pretrain.train_vae(vae, frames, cfg)
    shift, std = pretrain.latent_stats(vae, frames)
    vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(1.0 / std, 4))
    log.update(
        shift_factor=round(shift, 4),
        scaling_factor=round(1.0 / std, 4),
        val_l1={str(s): round(pretrain.reconstruction_l1(vae, p), 4) for s, p in val_frames.items()},
    )
    return log


def _flow():
    return FlowConfig(shift_mode="flux", guidance=1.0)  # the sampler's own resolution-dependent shift


def _validation(pipe, model_cfg, val_pools, flow, seed: int) -> dict:
    """Held-out flow-matching loss of the trained model and of a random model of the same architecture."""
    trained = pretrain.validation_loss(pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, val_pools, flow)
    torch.manual_seed(seed + 100)
    clip, t5 = components.text_encoders(model_cfg, len(pipe.tokenizer))
    untrained = pretrain.validation_loss(
        components.transformer(model_cfg).eval(), clip.eval(), t5.eval(), val_pools, flow
    )
    return {"trained": trained, "untrained": untrained}


def domain_group_validation(pipe, cfg: pretrain.PretrainConfig) -> dict:
    """Held-out-frame flow-matching loss (validation split) of the training and the held-out domains
    apart: the before/after figure of putting held-out single frames into the base's pretraining."""
    out = {}
    for name, domains in (("train_domains", TRAIN_DOMAINS), ("heldout_domains", HELDOUT_DOMAINS)):
        pools = {
            s: pretrain.latent_pool(
                pipe, corpus.frame_pool(s, cfg.val_per_domain, corpus.VAL_SPLIT_SEED, domains, final_caption_only=0)
            )
            for s in cfg.pools
        }
        out[name] = pretrain.validation_loss(pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pools, _flow())
    return out


def _jsonable(cfg) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))
