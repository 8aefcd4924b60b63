"""Frames in another form (grayscale, RGBA, 16-bit, mixed sizes, one frame, none, not an image): the documented
conversion of data/image_modes.py, or a clear error at the door, at every library entry that takes frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pm_lightning.data.image_modes import as_rgb, frames_as_rgb, same_size
from pm_lightning.inference.adaptive import adapt_sequence
from pm_lightning.inference.adaptive_rule import AdaptiveConfig
from tests.test_adaptive import needs_tiny_eval


def pattern(size=(32, 32), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def test_transparency_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent black
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid gray
    out = np.asarray(as_rgb(Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)
    assert all(abs(int(c) - 127) <= 1 for c in out[0, 2])
    la = Image.fromarray(np.array([[[10, 0]]], np.uint8), "LA")
    assert as_rgb(la).getpixel((0, 0)) == (255, 255, 255)


def test_grayscale_is_replicated_and_16_bit_is_scaled():
    gray = Image.fromarray(np.array([[0, 100, 255]], np.uint8), "L")
    assert [as_rgb(gray).getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]
    wide = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
    assert wide.mode.startswith("I;16")
    assert [as_rgb(wide).getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]


def test_rgb_passes_through_and_cmyk_converts():
    img = pattern()
    assert as_rgb(img) is img
    assert as_rgb(img.convert("CMYK")).mode == "RGB"


@pytest.mark.parametrize("mode", ["I", "F"])
def test_images_without_an_agreed_range_are_refused(mode):
    img = Image.fromarray(np.zeros((4, 4), np.int32 if mode == "I" else np.float32), mode)
    with pytest.raises(ValueError, match="8-bit"):
        frames_as_rgb([pattern(), img])


def test_not_an_image_and_no_images_fail_at_the_door_naming_the_index():
    with pytest.raises(TypeError, match="frame 1 is a ndarray, not a PIL image"):
        frames_as_rgb([pattern(), np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="no frames given"):
        frames_as_rgb([])


def test_same_size_resizes_to_the_first_frame():
    out, resized = same_size([pattern((32, 32)), pattern((48, 20))])
    assert resized and [im.size for im in out] == [(32, 32), (32, 32)]
    frames = [pattern(), pattern(seed=1)]
    out, resized = same_size(frames)
    assert not resized and all(a is b for a, b in zip(out, frames))


# ---------------------------------------------------------------- the encoders


@pytest.fixture(scope="module")
def encoders():
    from pm_lightning.models.encoders import Encoders

    return Encoders.load()


@needs_tiny_eval
def test_encoders_see_an_opaque_rgba_or_gray_frame_as_its_rgb_conversion(encoders):
    rgb = pattern()
    gray = rgb.convert("L")
    ref = encoders.image_embeddings([rgb, gray.convert("RGB")])
    got = encoders.image_embeddings([rgb.convert("RGBA"), gray])
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(encoders.patch_tokens([rgb.convert("RGBA")]), encoders.patch_tokens([rgb]))


@needs_tiny_eval
def test_encoders_take_mixed_sizes_and_one_frame_and_refuse_none(encoders):
    assert encoders.image_embeddings([pattern((32, 32)), pattern((96, 40)), pattern((1, 1))]).shape[0] == 3
    assert encoders.patch_tokens([pattern()]).shape[0] == 1
    with pytest.raises(ValueError, match="no images given"):
        encoders.image_embeddings([])
    with pytest.raises(TypeError, match="image 0 is a Tensor"):
        encoders.patch_tokens([torch.zeros(3, 32, 32)])


# ---------------------------------------------------------------- adaptive steps


class ShapeScorer:
    """Image features that record the sizes and modes they were asked for (no model)."""

    def __init__(self):
        self.seen = []

    def image_features(self, images):
        self.seen.extend((im.size, im.mode) for im in images)
        v = torch.stack([torch.tensor(np.asarray(im, np.float32).mean((0, 1))) for im in images])  # (n, 3)
        v = torch.nn.functional.normalize(v + 1e-3, dim=-1)
        return v, v[:, None, :].expand(-1, 4, -1)

    def text_features(self, texts):
        return torch.nn.functional.normalize(torch.ones(len(texts), 3), dim=-1)


def test_adaptive_steps_convert_mixed_inputs_and_say_so():
    frames = [pattern((32, 32)), pattern((48, 20), 1).convert("L"), pattern((32, 32), 2).convert("RGBA")]
    scorer = ShapeScorer()
    result = adapt_sequence(frames, scorer, insert_fn=lambda a, b, n: [a] * n, cfg=AdaptiveConfig(max_rounds=1))
    assert {s for s in scorer.seen} <= {((32, 32), "RGB")}
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in result.images)
    notes = result.report["input_conversions"]
    assert "frame 1: L -> RGB" in notes and "frame 2: RGBA -> RGB" in notes and "frame 1: 48x20 -> 32x32" in notes


def test_adaptive_steps_on_one_frame_say_why_nothing_happened_and_a_step_count_mismatch_is_refused():
    one = adapt_sequence([pattern()], ShapeScorer(), insert_fn=lambda a, b, n: [a] * n)
    assert one.report["stopped"].startswith("fewer than two frames") and len(one.images) == 1
    with pytest.raises(ValueError, match="3 step texts for 2 frames"):
        adapt_sequence([pattern(), pattern()], ShapeScorer(), insert_fn=lambda a, b, n: [a] * n, steps=["a"] * 3)
