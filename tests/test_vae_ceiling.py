"""bench/vae_ceiling.py: the verdict on hand-made means, and its round trip is stage 2's encode + decode exactly."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import load_bench

BENCH = REPO / "bench" / "vae_ceiling.py"


@pytest.fixture(scope="module")
def vc():
    return load_bench(BENCH.name, "vae_ceiling_bench")


def scores(vc, ceiling: dict, fade: dict, copy: dict) -> dict:
    rows = {vc.CEILING: ceiling, vc.BASELINES[0]: fade, vc.BASELINES[1]: copy}
    return {m: {k: np.array(v) for k, v in row.items()} for m, row in rows.items()}


def test_shortfalls_lists_every_metric_the_ceiling_does_not_strictly_win(vc):
    fade = {"mse": [0.004, 0.004], "psnr": [25.0, 25.0], "clip": [0.94, 0.94]}
    copy = {"mse": [0.009, 0.009], "psnr": [22.0, 22.0], "clip": [0.90, 0.90]}
    better = {"mse": [0.001, 0.003], "psnr": [30.0, 26.0], "clip": [0.99, 0.95]}
    assert vc.shortfalls(scores(vc, better, fade, copy)) == []
    # the committed VAE's shape of result: worse than both on MSE/PSNR, between them on CLIP
    worse = {"mse": [0.010, 0.011], "psnr": [20.0, 21.0], "clip": [0.92, 0.92]}
    assert vc.shortfalls(scores(vc, worse, fade, copy)) == [
        "mse vs cross-fade",
        "psnr vs cross-fade",
        "clip vs cross-fade",
        "mse vs nearer neighbour (f_i)",
        "psnr vs nearer neighbour (f_i)",
    ]
    tie = dict(better, clip=[0.94, 0.94])  # a tie is not a win
    assert vc.shortfalls(scores(vc, tie, fade, copy)) == ["clip vs cross-fade"]
    no_clip = {k: better[k] for k in ("mse", "psnr")}  # without an encoder, only the pixel metrics
    assert vc.shortfalls(scores(vc, no_clip, fade, copy)) == []


def test_round_trip_is_the_backbone_s_encode_and_decode(vc, tiny_base):
    """The ceiling frames equal `encode_images` -> `decode_latents` -> `to_pil` of FluxBackbone (what
    bench/insertion.py's ceiling row and stage 2 use), pixel for pixel."""
    import torch

    from pm_lightning.data.synthetic_corpus import generate_sequence, sequence_seed
    from pm_lightning.inference.reference_sampling import to_pil, to_tensor
    from pm_lightning.models.backbone import FluxBackbone

    frames = generate_sequence("cake", sequence_seed(1, "cake", 0), 64).frames[:3]
    backbone = FluxBackbone.from_pretrained(tiny_base)
    x = torch.stack([to_tensor(f, 64) for f in frames])
    want = [np.asarray(to_pil(y)) for y in backbone.decode_latents(backbone.encode_images(x))]
    got = [np.asarray(im) for im in vc.round_trip(backbone.vae, frames, 64, batch=2)]
    assert len(got) == 3 and all((g == w).all() for g, w in zip(got, want))
    assert any((g != np.asarray(f.convert("RGB"))).any() for g, f in zip(got, frames))  # a lossy VAE, not identity


def test_token_price_times_the_candidate_s_token_count_against_the_committed_factor(vc):
    """A 4x VAE gives 4x the tokens of the committed 8x at every canvas size; the ratio is the two timings'."""
    price = vc.token_price(4, 16, sizes=(32, 64), batch=1, reps=1)
    assert {s: (r["tokens"], r["tokens_8x"]) for s, r in price.items()} == {32: (16, 4), 64: (64, 16)}
    assert all(r["s"] > 0 and r["s_8x"] > 0 and abs(r["ratio"] - r["s"] / r["s_8x"]) < 0.01 for r in price.values())
    same = vc.token_price(8, 64, sizes=(32,), batch=1, reps=1)[32]  # 8x, 64 channels: only in_channels differ
    assert same["tokens"] == same["tokens_8x"] == 4
