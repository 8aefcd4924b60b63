"""The embedded tiny Flux: stock diffusers loads it, it is small, its tokenizers work offline; recipe helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pm_lightning.core.paths import tiny_flux_dir
from pm_lightning.data.synthetic_corpus import DOMAINS, HELDOUT_DOMAINS
from pm_lightning.tiny.flux_components import EOS_ID, PAD_ID, dir_size_mb
from pm_lightning.tiny.flux_pretrain import lr_at
from pm_lightning.tiny.frame_pools import frame_caption, frame_pool, sequences
from tests.conftest import REPO

CAPTION = "a garden of four red flowers. step 9: the sun shines"


def test_stock_flux_pipeline_loads_and_generates_64px():
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(tiny_flux_dir()))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        CAPTION,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=1.0,
        max_sequence_length=32,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)
    assert np.asarray(image).std() > 5  # a picture, not a flat colour


def test_directory_is_small_and_safetensors_only():
    assert dir_size_mb(tiny_flux_dir()) < 50
    weights = [p.name for p in tiny_flux_dir().rglob("*") if p.suffix in {".safetensors", ".bin", ".pt", ".ckpt"}]
    assert len(weights) == 4 and all(w.endswith(".safetensors") for w in weights)


def test_tokenizers_load_offline_with_autotokenizer(monkeypatch):
    from transformers import AutoTokenizer, CLIPTextConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip_tok = AutoTokenizer.from_pretrained(tiny_flux_dir() / "tokenizer")
    t5_tok = AutoTokenizer.from_pretrained(tiny_flux_dir() / "tokenizer_2")
    assert clip_tok.model_max_length == 77 and t5_tok.model_max_length == 32
    ids = t5_tok(CAPTION, padding="max_length", max_length=32, truncation=True).input_ids
    n = len(CAPTION.replace(".", " .").replace(":", " :").split())
    assert ids[n] == EOS_ID == t5_tok.eos_token_id and ids[n + 1 :] == [PAD_ID] * (31 - n)
    assert t5_tok.unk_token_id not in ids
    assert t5_tok.batch_decode([ids], skip_special_tokens=True)[0].startswith("a garden of four red flowers")
    clip_cfg = CLIPTextConfig.from_pretrained(tiny_flux_dir() / "text_encoder")
    assert clip_cfg.eos_token_id == clip_tok.eos_token_id and clip_cfg.pad_token_id == clip_tok.pad_token_id


def test_vae_config_carries_flux_latent_statistics():
    config = json.loads((tiny_flux_dir() / "vae" / "config.json").read_text())
    assert config["latent_channels"] == 16 and len(config["block_out_channels"]) == 4
    assert config["shift_factor"] != 0.0 and config["scaling_factor"] != 1.0


def test_training_log_shows_learning():
    log = json.loads((tiny_flux_dir() / "training_log.json").read_text())
    val = log["validation"]
    assert val["trained"]["mean"] < 0.5 * val["untrained"]["mean"]
    readme = (tiny_flux_dir() / "README.md").read_text()
    assert str(val["trained"]["mean"]) in readme and str(val["untrained"]["mean"]) in readme


def test_pretraining_frames_are_single_frames_of_every_domain_held_out_ones_included():
    pool = frame_pool(64, 1)  # one sequence per domain, every frame
    seqs = sequences(list(DOMAINS), 0, 1, 64)
    for seq in seqs:  # as FLUX knows origami as pictures
        assert sum(c.startswith(seq.caption + ". step") for c in pool.captions) == len(seq.frames), seq.domain
    assert {s.domain for s in seqs} >= set(HELDOUT_DOMAINS)
    assert pool.pixels.shape[1:] == (3, 64, 64) and pool.pixels.dtype == torch.uint8  # one frame, never a grid


def test_the_base_knows_the_held_out_domains_as_pictures():
    """Their frames' flow-matching loss is far below an untrained model's (the pre-rebuild base: 1.88 vs 2.33)."""
    val = json.loads((tiny_flux_dir() / "training_log.json").read_text())["validation"]
    groups = val["by_domain_group"]
    assert groups["heldout_domains"]["mean"] < 0.25 * val["untrained"]["mean"]
    assert groups["train_domains"]["mean"] < 0.25 * val["untrained"]["mean"]


def test_frame_caption_numbers_steps_from_one():
    seq = sequences(["cake"], 0, 1, 16)[0]
    assert frame_caption(seq, 0) == f"{seq.caption}. step 1: {seq.steps[0]}"


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    assert lr_at(0, 100, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 10) == pytest.approx(0.1)


@pytest.mark.slow
def test_builder_runs_a_reduced_recipe(tmp_path):
    from diffusers import FluxPipeline

    from pm_lightning.tiny_base import main

    main(
        [
            "--out",
            str(tmp_path / "tiny"),
            "--quick",
            "--vae-steps",
            "2",
            "--steps",
            "2",
            "--samples",
            "none",
            "--threads",
            str(torch.get_num_threads()),
        ]
    )
    pipe = FluxPipeline.from_pretrained(str(tmp_path / "tiny"))
    assert pipe.vae.config.scaling_factor != 1.0
    assert (tmp_path / "tiny" / "README.md").is_file()


def test_the_stage_shards_hold_no_held_out_sequence():
    """The base sees held-out domains as single pictures only: `make shards` writes the training split without them."""
    make = (REPO / "Makefile").read_text()
    train_line = next(line for line in make.splitlines() if "pm_lightning.synth" in line and "/train" in line)
    assert "--no-held-out" in train_line
    index = REPO / "data" / "shards" / "train" / "index.json"
    if index.is_file():  # built by `make shards` on this machine
        assert not set(json.loads(index.read_text())["domains"]) & set(HELDOUT_DOMAINS)


def test_the_tiny_transformer_config_is_spelled_once():
    """The recipe builds, and data/tiny-flux holds, exactly `TINY_FLUX_TRANSFORMER` (the tests' and the CPU
    benchmarks' small model)."""
    from pm_lightning.models.variants import TINY_FLUX_TRANSFORMER
    from pm_lightning.tiny.flux_components import TinyFluxConfig, transformer

    on_disk = json.loads((tiny_flux_dir() / "transformer" / "config.json").read_text())
    wanted = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_FLUX_TRANSFORMER.items()}
    assert {k: on_disk[k] for k in wanted} == wanted
    with torch.device("meta"):
        built = dict(transformer(TinyFluxConfig()).config)
    assert {k: built[k] for k in wanted} == {k: TINY_FLUX_TRANSFORMER[k] for k in wanted}


@pytest.mark.slow
def test_vae_only_trains_the_vae_a_full_build_would_with_the_configured_channels(tmp_path):
    """`--vae-only` writes an AutoencoderKL folder with the configured latent channels and block widths, and its
    weights equal the VAE of a full build with the same flags (same seed, initialisation and frames); the full
    build's transformer reads 4x the latent channels."""
    from diffusers import AutoencoderKL, FluxPipeline

    from pm_lightning.tiny_base import main

    common = ["--quick", "--vae-steps", "2", "--latent-channels", "32", "--vae-channels", "8,16,32,32"]
    common += ["--threads", str(torch.get_num_threads())]
    main(["--out", str(tmp_path / "vae"), "--vae-only", *common])
    vae = AutoencoderKL.from_pretrained(str(tmp_path / "vae"))
    assert vae.config.latent_channels == 32 and list(vae.config.block_out_channels) == [8, 16, 32, 32]
    assert vae.config.scaling_factor != 1.0  # the latent statistics were stored
    assert not (tmp_path / "vae" / "transformer").exists()
    with torch.no_grad():
        assert vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode().shape == (1, 32, 8, 8)
    log = json.loads((tmp_path / "vae" / "training_log.json").read_text())
    assert log["vae"]["params"] == sum(p.numel() for p in vae.parameters())

    main(["--out", str(tmp_path / "full"), "--steps", "2", "--samples", "none", *common])
    pipe = FluxPipeline.from_pretrained(str(tmp_path / "full"))
    assert pipe.transformer.config.in_channels == 128
    full = pipe.vae.state_dict()
    assert all(torch.equal(t, full[k]) for k, t in vae.state_dict().items())
    assert pipe.vae.config.scaling_factor == vae.config.scaling_factor


def test_with_latents_sets_the_transformer_s_input_to_four_times_the_latent_channels():
    from pm_lightning.tiny.flux_components import TinyFluxConfig, with_latents

    cfg = with_latents(64, (32, 64, 128, 128), 2)
    assert cfg.transformer["in_channels"] == 256 and cfg.vae_layers == 2 and cfg.vae_channels == (32, 64, 128, 128)
    assert with_latents(16) == TinyFluxConfig()  # the committed base's config
