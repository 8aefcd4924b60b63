"""Encoders: the embedded tiny evaluators (data/tiny-eval), the DINOv2 path, clear errors."""

from __future__ import annotations

import pytest
import torch

from pm_lightning.core.paths import tiny_eval_dir
from pm_lightning.data.synthetic_corpus import TRAIN_DOMAINS, generate_sequence, sequence_seed
from pm_lightning.models.encoders import EncoderNotFound, Encoders
from pm_lightning.tiny.evaluators import EVAL_SPLIT_SEED, zero_shot_prompt

pytestmark = pytest.mark.skipif(
    not (tiny_eval_dir() / "clip" / "open_clip_config.json").is_file(),
    reason="data/tiny-eval missing: run `make tiny-eval`",
)


@pytest.fixture(scope="module")
def enc() -> Encoders:
    return Encoders.load(clip="tiny", dino="tiny", device="cpu")


def test_tiny_clip_classifies_unseen_frames_zero_shot(enc):
    # sequences of the validation split (seed 1): never trained on
    seqs = [generate_sequence(d, sequence_seed(EVAL_SPLIT_SEED, d, 1000 + i)) for d in TRAIN_DOMAINS for i in range(2)]
    frames = [s.frames[k] for s in seqs for k in (len(s.frames) // 2, -1)]  # a middle and the final frame
    truth = torch.tensor([TRAIN_DOMAINS.index(s.domain) for s in seqs for _ in range(2)])
    prompts = enc.text_embeddings([zero_shot_prompt(d) for d in TRAIN_DOMAINS])  # (7, D)
    pred = (enc.image_embeddings(frames) @ prompts.T).argmax(-1)
    assert (pred == truth).float().mean().item() >= 0.9, f"predicted {pred.tolist()} for {truth.tolist()}"


def test_embeddings_are_unit_norm_and_caption_matches_its_own_sequence(enc):
    a, b = generate_sequence("cake", sequence_seed(EVAL_SPLIT_SEED, "cake", 1)), generate_sequence("lego", 5)
    img = enc.image_embeddings([a.frames[-1], b.frames[-1]])
    txt = enc.text_embeddings([a.caption, b.caption])
    assert img.shape == txt.shape == (2, enc.clip_model.visual.output_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    sim = img @ txt.T
    assert sim[0, 0] > sim[0, 1] and sim[1, 1] > sim[1, 0]


def test_tiny_patch_tokens_unit_norm_shape_and_image_dependent(enc):
    a, b = generate_sequence("garden", 1).frames[-1], generate_sequence("sketch", 2).frames[-1]
    tok = enc.patch_tokens([a, b, a.resize((256, 256))])
    width = enc.clip_model.visual.transformer.width
    assert tok.shape == (3, 64, width)  # 64 px / 8 px patches = 8 x 8, no CLS
    assert torch.allclose(tok.norm(dim=-1), torch.ones(3, 64), atol=1e-5)
    cos_other = (tok[0] * tok[1]).sum(-1).mean()  # mean cosine of same-position patches
    cos_resized = (tok[0] * tok[2]).sum(-1).mean()  # the same image at 256 px: resized in preprocessing
    assert cos_other < 0.9 and cos_resized > 0.99


def test_dinov2_path_loads_a_local_transformers_model(tmp_path, enc):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=56,
            patch_size=14,
        )
    ).save_pretrained(tmp_path / "dino")
    e = Encoders.load(clip="tiny", dino=str(tmp_path / "dino"))
    images = [generate_sequence("cake", 1).frames[-1], generate_sequence("lego", 1).frames[-1]]
    tok = e.patch_tokens(images)
    assert tok.shape == (2, 16, 32)  # (56 / 14)^2 patches, CLS dropped
    assert torch.allclose(tok.norm(dim=-1), torch.ones(2, 16), atol=1e-5)
    assert not torch.allclose(tok[0], tok[1])


@pytest.mark.parametrize("kw", [{"clip": "/nonexistent/clip-dir"}, {"dino": "/nonexistent/dino-dir"}])
def test_missing_pretrained_names_what_was_looked_for_and_the_fallback(kw):
    with pytest.raises(EncoderNotFound) as err:
        Encoders.load(**kw)
    msg = str(err.value)
    assert "/nonexistent/" in msg and "'tiny'" in msg


def test_missing_tiny_says_how_to_build_it(tmp_path):
    with pytest.raises(EncoderNotFound, match="make tiny-eval"):
        Encoders.load(clip="tiny", root=tmp_path)
