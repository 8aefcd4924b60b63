"""FluxBackbone: packing and ids as FluxPipeline, text encoding (+ cache), VAE math, errors, meta build."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline

from pm_lightning.core.paths import tiny_flux_dir
from pm_lightning.models.backbone import (
    FluxBackbone,
    image_ids,
    meta_transformer,
    pack,
    unpack,
)
from pm_lightning.models.text_embedding_cache import caption_key
from pm_lightning.models.weights import BackboneNotFoundError

CAPTIONS = [
    "a red lego tower of eight red bricks on a green baseplate. step 3: place the second red brick",
    "a garden of four blue flowers. step 1: dig the soil bed",
]


@pytest.fixture(scope="module")
def backbone() -> FluxBackbone:
    return FluxBackbone.from_pretrained("tiny")


@pytest.fixture(scope="module")
def pipe() -> FluxPipeline:
    return FluxPipeline.from_pretrained(str(tiny_flux_dir()))


# -- packing and ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(2, 2), (6, 8), (24, 24)])
def test_pack_matches_diffusers_and_unpack_inverts(h, w):
    latents = torch.randn(3, 16, h, w)
    tokens = pack(latents)  # (B, N, 64)
    assert torch.equal(tokens, FluxPipeline._pack_latents(latents, 3, 16, h, w))
    assert torch.equal(unpack(tokens, h, w), latents)
    assert torch.equal(unpack(tokens, h, w), FluxPipeline._unpack_latents(tokens, 8 * h, 8 * w, 8))
    assert torch.equal(pack(unpack(tokens, h, w)), tokens)


@pytest.mark.parametrize("h,w", [(2, 2), (6, 8), (24, 24)])
def test_image_ids_match_diffusers(h, w):
    expected = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    assert torch.equal(image_ids(h, w), expected)


def test_pack_rejects_odd_latents():
    with pytest.raises(ValueError, match="even"):
        pack(torch.zeros(1, 16, 3, 4))


# -- text ------------------------------------------------------------------------------------------------


def test_encode_text_equals_encode_prompt(backbone, pipe):
    embeds, pooled, txt_ids = backbone.encode_text(CAPTIONS)
    with torch.no_grad():  # as in FluxPipeline.__call__
        ref_embeds, ref_pooled, ref_ids = pipe.encode_prompt(CAPTIONS, device="cpu", max_sequence_length=32)
    assert embeds.shape == (2, 32, backbone.transformer.config.joint_attention_dim)
    assert torch.equal(embeds, ref_embeds)
    assert torch.equal(pooled, ref_pooled)
    assert torch.equal(txt_ids, ref_ids)


def test_text_cache_is_keyed_by_caption_text_only(tmp_path):
    cached = FluxBackbone.from_pretrained("tiny", text_cache_dir=tmp_path)
    first = cached.encode_text(CAPTIONS)
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 2
    assert {f.stem for f in files} == {caption_key(c) for c in CAPTIONS}
    # the same captions again, at other positions and repeated (another step, another batch): no new file
    again = cached.encode_text([CAPTIONS[1], CAPTIONS[0], CAPTIONS[1]])
    assert sorted(tmp_path.rglob("*.safetensors")) == files
    assert torch.equal(again[0][1], first[0][0]) and torch.equal(again[0][0], first[0][1])
    assert torch.equal(again[1][2], first[1][1])
    uncached = FluxBackbone.from_pretrained("tiny").encode_text(CAPTIONS)
    assert all(torch.equal(a, b) for a, b in zip(first, uncached))


# -- VAE -------------------------------------------------------------------------------------------------


def _frames(size: int = 64) -> torch.Tensor:
    from pm_lightning.tiny.frame_pools import sequences, to_pixels, to_tensor

    seqs = sequences(["lego", "cake"], 1, 1, size)
    return to_pixels(torch.stack([to_tensor(s.frames[-1]) for s in seqs]))  # (2, 3, S, S) in [-1, 1]


def test_vae_shift_scale_math_inverts_exactly(backbone):
    x = _frames()
    z = backbone.vae.encode(x).latent_dist.mode()  # raw VAE latents
    latents = backbone.encode_images(x)
    cfg = backbone.vae.config
    assert cfg.shift_factor != 0 and cfg.scaling_factor != 1
    assert torch.allclose(latents, (z - cfg.shift_factor) * cfg.scaling_factor)
    assert torch.allclose(latents / cfg.scaling_factor + cfg.shift_factor, z, atol=1e-6)
    assert torch.allclose(backbone.decode_latents(latents), backbone.vae.decode(z).sample.clamp(-1, 1), atol=1e-5)


def test_vae_round_trip_reconstructs_frames(backbone):
    x = _frames(64)
    latents = backbone.encode_images(x)
    assert latents.shape == (2, 16, 8, 8)
    rec = backbone.decode_latents(latents)
    assert rec.shape == x.shape and rec.min() >= -1 and rec.max() <= 1
    err = (rec - x).abs().mean()
    assert err < 0.15  # the tiny VAE is blurry (L1 ~0.1 at 64 px) but keeps shapes and colours
    assert err < 0.3 * (x.flip(0) - x).abs().mean()  # far closer to its own frame than to the other one


# -- transformer -----------------------------------------------------------------------------------------


def test_predict_runs_packed_tokens(backbone):
    latents = backbone.encode_images(_frames(64))  # (2, 16, 8, 8)
    embeds, pooled, txt_ids = backbone.encode_text(CAPTIONS)
    out = backbone.predict(pack(latents), torch.tensor([0.3, 0.7]), embeds, pooled, txt_ids, image_ids(8, 8))
    assert out.shape == (2, 16, 64)
    explicit = backbone(pack(latents), torch.tensor([0.3, 0.7]), embeds, pooled, txt_ids, image_ids(8, 8), guidance=1.0)
    assert torch.equal(out, explicit)


def test_frozen_parts_stay_in_eval_and_checkpointing_switches(backbone):
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert backbone.transformer.training
    assert not backbone.text_encoder.training and not backbone.text_encoder_2.training and not backbone.vae.training
    backbone.set_gradient_checkpointing(True)
    assert backbone.transformer.gradient_checkpointing
    backbone.set_gradient_checkpointing(False)
    assert not backbone.transformer.gradient_checkpointing
    backbone.eval()


# -- errors and meta -------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["/nonexistent/flux-dir", "nobody-here/no-such-flux-model"])
def test_missing_model_fails_fast_with_one_clear_error(source, monkeypatch, tmp_path):
    """Fast by construction: offline, no connection is ever attempted (checked at the socket), so nothing waits."""
    import socket

    attempts: list = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: attempts.append(address))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(BackboneNotFoundError) as info:
        FluxBackbone.from_pretrained(source)
    assert attempts == []
    msg = str(info.value)
    assert source in msg and "hf-home" in msg and "HF_HUB_OFFLINE" in msg
    assert "local diffusers-format directory" in msg  # way 1
    assert "hf auth login" in msg and "HF_HOME" in msg  # way 2
    assert "tiny" in msg and str(tiny_flux_dir()) in msg  # way 3


def test_meta_transformer_flux_dev_has_12b_parameters_and_no_storage():
    model = meta_transformer("flux-dev")
    n = sum(p.numel() for p in model.parameters())
    assert 11.85e9 < n < 11.95e9
    assert all(p.is_meta for p in model.parameters())


def test_meta_transformer_tiny_reads_its_config():
    model = meta_transformer("tiny")
    assert all(p.is_meta for p in model.parameters())
    assert model.config.num_layers == 2 and model.config.num_single_layers == 4
