"""`python -m pm_lightning.latent_cache` and `latent_cache_dir`: latents equal to the VAE's encoding, the same first
step as training from pixels without the VAE on the model's device, a missing grid and another VAE refused."""

from __future__ import annotations

import pytest
import torch

from pm_lightning import fit, latent_cache
from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.pixels import float_pixels
from pm_lightning.models.backbone import load_vae
from pm_lightning.models.vae_latents import LatentCache, MissingLatents, WrongLatentCache
from tests.conftest import TRAIN_DOMAINS
from tests.test_fit import adapters_of, small_config, with_outputs
from tests.test_stage1 import make_module

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


@pytest.fixture(scope="module")
def cache_dir(tiny_base, tiny_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents")
    argv = ["--shards", tiny_shards["train"], "--resolution", "96", "--base", tiny_base, "--out", str(out)]
    assert latent_cache.main(argv + ["--batch-size", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def batch(tiny_shards) -> dict:
    dm = ProcessDataModule(
        tiny_shards["train"], domains=TRAIN_DOMAINS, resolution=96, batch_size=4, num_workers=0, shuffle_buffer=16
    )
    return float_pixels(next(iter(dm.train_dataloader())))  # [-1, 1], as the Trainer's batch-transfer hook makes it


def test_cached_latents_are_the_vae_encoding_of_the_training_grids(tiny_base, cache_dir, batch, capsys):
    module = make_module(tiny_base)
    expected = module.backbone.encode_images(batch["pixels"])  # (4, 16, 12, 12)
    cache = LatentCache(cache_dir, module.backbone.vae, torch.float32, tiny_base)
    got = cache.load(batch["grid_id"], 96, batch["key"], batch["url"])
    assert got.shape == expected.shape == (4, 16, 12, 12) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # encoded in batches of 3, here of 4
    capsys.readouterr()
    argv = ["--shards", str(batch["url"][0]), "--resolution", "96", "--base", tiny_base, "--out", str(cache_dir)]
    assert latent_cache.main(argv) == 0
    assert "0 grids encoded" in capsys.readouterr().out  # a second call encodes nothing new


def test_training_from_the_cache_matches_pixels_without_the_vae(tiny_base, cache_dir, batch, monkeypatch):
    torch.manual_seed(0)
    pixels = make_module(tiny_base)
    torch.manual_seed(0)
    cached = make_module(tiny_base, latent_cache_dir=str(cache_dir))
    backbone = cached.backbone
    assert backbone.vae is None and backbone.any_vae is not None  # parked in CPU memory, out of the module tree
    assert not any(n.startswith("backbone.vae") for n, _ in cached.named_parameters())
    pixels.train(), cached.train()

    def refuse(*args, **kwargs):
        raise AssertionError("the VAE encoded a grid")

    expected = pixels.losses(batch, step=0)
    monkeypatch.setattr(type(backbone.any_vae), "encode", refuse)
    got = cached.losses(batch, step=0)
    for term in ("fm", "align", "t"):
        torch.testing.assert_close(got[term], expected[term], rtol=1e-4, atol=1e-6)


def test_a_missing_grid_names_it_and_the_command(tiny_base, cache_dir, batch, tmp_path):
    vae = load_vae(tiny_base)
    partial = tmp_path / "partial"
    cache = LatentCache(partial, vae, torch.float32, tiny_base)
    cache.open(96)
    cache.save(batch["grid_id"][0], torch.zeros(16, 12, 12), 96)
    with pytest.raises(MissingLatents) as err:
        cache.load(batch["grid_id"], 96, batch["key"], batch["url"])
    message = str(err.value)
    assert repr(batch["key"][1]) in message and batch["url"][1] in message and "3 of this batch's 4 grids" in message
    assert "python -m pm_lightning.latent_cache --shards" in message and "--resolution 96" in message
    with pytest.raises(MissingLatents, match="no latent cache at"):
        LatentCache(tmp_path / "empty", vae, torch.float32).load(batch["grid_id"], 96)


def test_another_vae_resolution_or_dtype_is_refused(tiny_base, cache_dir, batch):
    vae = load_vae(tiny_base)
    LatentCache(cache_dir, vae, torch.float32, tiny_base).load(batch["grid_id"][:1], 96)  # the right one reads
    with torch.no_grad():
        next(vae.parameters()).add_(1e-3)  # another base: the same VAE config, other weights
    other = LatentCache(cache_dir, vae, torch.float32, "other-base")
    with pytest.raises(WrongLatentCache, match=r"holds \[base .*resolution 96, dtype float32\].*'other-base'.*refused"):
        other.load(batch["grid_id"], 96)
    right = LatentCache(cache_dir, load_vae(tiny_base), torch.float32, tiny_base)
    with pytest.raises(WrongLatentCache, match="resolution 192"):
        right.load(batch["grid_id"], 192)
    with pytest.raises(WrongLatentCache, match="dtype bfloat16"):
        LatentCache(cache_dir, load_vae(tiny_base), torch.bfloat16, tiny_base).load(batch["grid_id"], 96)


def test_fit_stops_with_exit_2_naming_a_missing_grid_or_a_foreign_cache(
    tiny_base, tiny_shards, cache_dir, tmp_path, capsys
):
    partial = tmp_path / "partial"
    cache = LatentCache(partial, load_vae(tiny_base), torch.float32, tiny_base)
    cache.open(96)  # a cache for this VAE, resolution and dtype that holds no grid of the shards
    config = small_config(tmp_path / "a", tiny_base, tiny_shards, max_steps=1, latent_cache_dir=str(partial))
    assert fit.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert (
        "error: grid " in err and "is not in the latent cache" in err and "python -m pm_lightning.latent_cache" in err
    )
    config = small_config(tmp_path / "b", tiny_base, tiny_shards, max_steps=1, latent_cache_dir=str(cache_dir))
    text = config.read_text().replace("resolution: 96", "resolution: 192")
    config.write_text(text)
    assert fit.main(["--config", str(config)]) == 2  # refused in configure_model, before a batch is read
    assert "was not made for this run" in capsys.readouterr().err


def test_sample_grids_decode_with_the_parked_vae(tiny_base, cache_dir):
    from pm_lightning.training.callbacks import SampleGrids

    module = make_module(tiny_base, latent_cache_dir=str(cache_dir))
    grids = SampleGrids(prompts=[{"domain": "lego", "caption": "a lego tower"}], resolution=64, num_inference_steps=2)
    images = grids.sample(module, progress=False)
    assert len(images) == 1 and images[0].size == (64, 64)
    assert module.backbone.vae is None and next(module.backbone.any_vae.parameters()).device.type == "cpu"


def test_stage2_refuses_the_latent_cache():
    from pm_lightning.training.stage2 import Stage2Module

    with pytest.raises(ValueError, match=r"latent_cache_dir is for stage 1"):
        Stage2Module(latent_cache_dir="somewhere")


@pytest.mark.slow
def test_a_cached_run_trains_like_a_pixel_run(tiny_base, tiny_shards, cache_dir, tmp_path):
    plain = with_outputs(small_config(tmp_path / "plain", tiny_base, tiny_shards, max_steps=2), every=2)
    assert fit.main(["--config", str(plain)]) == 0
    cached = with_outputs(
        small_config(tmp_path / "cached", tiny_base, tiny_shards, max_steps=2, latent_cache_dir=str(cache_dir)),
        every=2,
    )
    assert fit.main(["--config", str(cached)]) == 0
    a = adapters_of(tmp_path / "plain" / "run" / "checkpoints" / "last.ckpt")
    b = adapters_of(tmp_path / "cached" / "run" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)
    assert (tmp_path / "cached" / "run" / "samples" / "final.png").is_file()
