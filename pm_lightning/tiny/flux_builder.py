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

    starts = {size: 1000 * i for i, size in enumerate(sorted(cfg.pools))}  # disjoint sequences per size
    frames = {s: corpus.frame_pool(s, n, start=starts[s], seed=cfg.seed) for s, n in cfg.pools.items()}
    val_frames = {
        s: corpus.frame_pool(s, cfg.val_per_domain, split_seed=corpus.VAL_SPLIT_SEED, final_caption_only=0)
        for s in cfg.pools
    }
    log["frames"] = {str(s): len(p) for s, p in frames.items()}
    log["val_frames"] = {str(s): len(p) for s, p in val_frames.items()}

    log["vae"] = pretrain.train_vae(pipe.vae, frames, cfg)
    shift, std = pretrain.latent_stats(pipe.vae, frames)
    pipe.vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(1.0 / std, 4))
    log["vae"].update(
        shift_factor=round(shift, 4),
        scaling_factor=round(1.0 / std, 4),
        val_l1={str(s): round(pretrain.reconstruction_l1(pipe.vae, p), 4) for s, p in val_frames.items()},
    )

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
