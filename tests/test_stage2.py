"""Stage2Module / ReCraft: clean reference cells, what trains, the stage-1 merge, sampling, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from pm_lightning import fit
from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.grid import serpentine_cells
from pm_lightning.data.pixels import float_pixels
from pm_lightning.inference.reference_sampling import (
    insert_between,
    recraft,
    sample_reference_latents,
    sample_with_references,
    to_pil,
    to_tensor,
)
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapter_routing import adapters_disabled
from pm_lightning.models.adapters import adapter_parameters, add_adapters
from pm_lightning.training.optim import OptimizerConfig
from pm_lightning.training.stage2 import Stage2Module
from tests.conftest import TRAIN_DOMAINS
from tests.test_fit import small_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
CELL = 32  # 64-px 2x2 grids: fast


@pytest.fixture(scope="module")
def batch(tiny_shards) -> dict:
    dm = ProcessDataModule(
        tiny_shards["train"], domains=TRAIN_DOMAINS, resolution=96, batch_size=4, num_workers=0, shuffle_buffer=16
    )
    return float_pixels(next(iter(dm.train_dataloader())))  # [-1, 1], as the Trainer's batch-transfer hook makes it


@pytest.fixture(scope="module")
def stage1_file(tiny_base, tmp_path_factory) -> str:
    """A domain-free stage-1 LoRA in diffusers format (masked adapter, random B), as LoraExport writes it."""
    from pm_lightning.models.backbone import FluxBackbone
    from pm_lightning.models.lora_files import export_domain_lora

    backbone = FluxBackbone.from_pretrained(tiny_base)
    add_adapters(backbone.transformer, AdapterConfig(kind="masked", rank=4, num_domains=len(TRAIN_DOMAINS)))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in adapter_parameters(backbone.transformer):
            p.normal_(0, 0.05)
    return str(export_domain_lora(backbone.transformer, -1, tmp_path_factory.mktemp("stage1") / "unseen.safetensors"))


def make_module(tiny_base, stage1=None, mode="dual", **kw) -> Stage2Module:
    module = Stage2Module(
        base=tiny_base,
        domains=TRAIN_DOMAINS,
        stage1=stage1,
        adapter=AdapterConfig(kind="lora", rank=4),
        mode=mode,
        cell=CELL,
        optimizer=OptimizerConfig(name="adamw", lr=1e-3),
        **kw,
    )
    module.configure_model()
    return module


@pytest.fixture(scope="module")
def dual(tiny_base, stage1_file) -> Stage2Module:
    module = make_module(tiny_base, stage1_file)
    torch.manual_seed(1)
    with torch.no_grad():  # move B off zero: the new LoRA contributes
        for name, p in module.transformer.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.normal_(0, 0.02)
    return module


def perturbed_output(module, where: torch.Tensor, delta: float = 3.0):
    """A forward hook adding `delta` to the transformer's prediction at tokens `where` (B, N)."""

    def hook(mod, args, kwargs, out):
        return (out[0] + delta * where.unsqueeze(-1).to(out[0]), *out[1:])

    return module.transformer.register_forward_hook(hook, with_kwargs=True)


def test_loss_ignores_the_prediction_in_reference_cells(dual, batch):
    base = dual.losses(batch, step=3)
    mask = base["mask"]  # (B, N)
    assert mask.any(1).all() and (~mask).any(1).all()
    with perturbed_output(dual, mask):
        refs_changed = dual.losses(batch, step=3)["fm"]
    assert torch.equal(refs_changed, base["fm"])
    with perturbed_output(dual, ~mask & (torch.rand(mask.shape) < 0.3)):
        target_changed = dual.losses(batch, step=3)["fm"]
    assert (target_changed != base["fm"]).all()


def test_reference_cells_of_xt_are_exactly_clean(dual, batch):
    seen = {}
    handle = dual.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.update(xt=kw["hidden_states"]), with_kwargs=True
    )
    try:
        mask = dual.losses(batch, step=7)["mask"]
    finally:
        handle.remove()
    x0, _, mask0 = dual.encode_samples(dual.reference_samples(batch, step=7))
    assert torch.equal(mask, mask0)
    assert torch.equal(seen["xt"][mask], x0[mask])
    assert (seen["xt"][~mask] != x0[~mask]).all(-1).all()  # the learned cells are noised


def test_dual_masks_are_top_left_and_bottom_left_and_frames_reproducible(dual, batch):
    samples = dual.reference_samples(batch, step=11)
    assert all(f.shape == (4, 3, CELL, CELL) for f in samples["frames"])
    assert all(refs == (0, 3) for refs in samples["references"])
    assert [serpentine_cells(2, 2)[k] for k in samples["references"][0]] == [(0, 0), (1, 0)]
    again = dual.reference_samples(batch, step=11)
    assert all(torch.equal(a, b) for a, b in zip(samples["frames"], again["frames"]))
    other = dual.reference_samples(batch, step=12)
    assert any(not torch.equal(a, b) for a, b in zip(samples["frames"], other["frames"]))


def test_recraft_masks_the_last_serpentine_cell_of_each_sequence(tiny_base, batch):
    module = make_module(tiny_base, mode="recraft")
    samples = module.reference_samples(batch, step=0)
    _, _, mask = module.encode_samples(samples)  # (B, N) with N = (96 / 16)^2
    for i, (rows, cols) in enumerate(zip(samples["rows"], samples["cols"])):
        assert samples["references"][i] == (rows * cols - 1,)
        tok = 96 // 16
        r, c = serpentine_cells(rows, cols)[-1]
        rect = torch.zeros(tok, tok, dtype=torch.bool)
        rect[r * tok // rows : (r + 1) * tok // rows, c * tok // cols : (c + 1) * tok // cols] = True
        assert torch.equal(mask[i], rect.flatten())
    terms = module.losses(batch, step=0)
    assert terms["fm"].shape == (4,) and torch.isfinite(terms["fm"]).all()


def test_gradients_reach_only_the_new_lora(dual, batch):
    dual.zero_grad(set_to_none=True)
    dual.train()
    dual.losses(batch, step=0)["fm"].mean().backward()
    trainable = {id(p) for p in adapter_parameters(dual.transformer)}
    assert trainable and {id(p) for p in dual.parameters() if p.requires_grad} == trainable
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter_parameters(dual.transformer))
    assert all(p.grad is None for p in dual.parameters() if id(p) not in trainable)  # the fused stage-1 weights too
    dual.zero_grad(set_to_none=True)
    dual.eval()


def transformer_output(backbone, transformer, seed=0):
    """The transformer's velocity for fixed random tokens and a fixed caption."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.zeros(16), torch.arange(16) // 4, torch.arange(16) % 4], -1)  # (16, 3): a 4x4 token grid
    embeds, pooled, txt_ids = backbone.encode_text(["a lego tower"])
    guidance = torch.ones(1) if transformer.config.guidance_embeds else None
    return transformer(
        hidden_states=torch.randn(1, 16, 64, generator=g),
        timestep=torch.tensor([0.5]),
        guidance=guidance,
        pooled_projections=pooled,
        encoder_hidden_states=embeds,
        txt_ids=txt_ids,
        img_ids=ids,
        return_dict=False,
    )[0]


def test_stage1_fuse_changes_the_base_as_the_unfused_lora_does(tiny_base, stage1_file, dual):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_base)
    with adapters_disabled(dual.transformer):  # the fused base alone, without the new LoRA
        fused = transformer_output(dual.backbone, dual.transformer)
    plain = transformer_output(dual.backbone, pipe.transformer)
    assert not torch.allclose(plain, fused, atol=1e-4)
    pipe.load_lora_weights(stage1_file)  # stock diffusers, the adapter kept apart (not fused)
    assert torch.allclose(transformer_output(dual.backbone, pipe.transformer), fused, atol=1e-5)
    assert dual.hparams["stage1_sha256"] and dual.hparams["stage"] == 2


def test_missing_stage1_file_names_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nope" / "unseen.safetensors"
    with pytest.raises(FileNotFoundError, match="make train-stage1") as err:
        Stage2Module(stage1=str(missing))
    assert str(missing) in str(err.value) and "stage1: null" in str(err.value)


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(mode="triple"), "mode"),
        (dict(cell=40), "cell"),
        (dict(max_gap=0), "max_gap"),
        (dict(adapter=AdapterConfig(kind="masked")), "adapter.kind"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_key(kw, key):
    with pytest.raises(ValueError, match=key.split(".")[-1]):
        Stage2Module(**kw)


# ---------------------------------------------------------------- inference


def frame(value: float, cell: int = CELL):
    """A test frame: a horizontal ramp plus a constant, as PIL."""
    ramp = torch.linspace(-0.8, 0.8, cell).view(1, 1, cell).expand(3, cell, cell)
    return to_pil((ramp * 0.5 + value).clamp(-1, 1))


def test_inference_keeps_reference_latents_exact_and_frames_up_to_the_vae(dual):
    refs = {0: frame(-0.5), 3: frame(0.5)}
    latents, x_ref, mask = sample_reference_latents(
        dual.backbone, ["a lego tower"], [refs], 2, 2, CELL, num_inference_steps=3, seeds=[0]
    )
    assert mask.shape == latents.shape[:2] and torch.equal(latents[mask], x_ref[mask].to(latents))
    frames = sample_with_references(dual.backbone, "a lego tower", refs, 2, 2, CELL, num_inference_steps=3)
    assert len(frames) == 4 and all(f.size == (CELL, CELL) for f in frames)
    for k, ref in refs.items():
        pixels = to_tensor(ref, CELL)[None]
        round_trip = dual.backbone.decode_latents(dual.backbone.encode_images(pixels))[0]  # (3, c, c)
        assert (to_tensor(frames[k], CELL) - round_trip).abs().max() <= 1 / 127.5 + 1e-4, k  # up to 8-bit rounding
    assert (to_tensor(frames[1], CELL) - to_tensor(frames[0], CELL)).abs().mean() > 0.03  # a generated cell differs


def test_insert_between_and_recraft_shapes(dual):
    a, b = frame(-0.5), frame(0.5)
    two = insert_between(dual.backbone, a, b, "a lego tower", n=2, cell=CELL, num_inference_steps=2)
    one = insert_between(dual.backbone, a, b, "a lego tower", n=1, cell=CELL, num_inference_steps=2)
    assert len(two) == 2 and len(one) == 1
    assert np.array_equal(np.asarray(one[0]), np.asarray(two[0])) or np.array_equal(
        np.asarray(one[0]), np.asarray(two[1])
    )
    for frames in (9, 4):
        out = recraft(dual.backbone, frame(0.3, 48), "a lego tower", frames=frames, cell=CELL, num_inference_steps=2)
        assert len(out) == frames and all(f.size == (CELL, CELL) for f in out)


@pytest.fixture(scope="module")
def base_4x(tmp_path_factory) -> str:
    """A random tiny Flux whose VAE downsamples 4x (three blocks: `tiny_base --vae-channels 16,32,64`)."""
    from pm_lightning.tiny.flux_components import build_pipeline, with_latents
    from pm_lightning.tiny.frame_pools import tokenizer_texts

    out = tmp_path_factory.mktemp("tiny-flux-4x")
    torch.manual_seed(0)
    build_pipeline(with_latents(16, (16, 32, 64)), tokenizer_texts(20)).save_pretrained(out)
    return str(out)


def test_a_base_with_a_4x_vae_trains_and_samples_stage_2_with_exact_references(base_4x, batch):
    """Nothing assumes Flux's 8x: on a 4x base a token covers 8 px, the stage-2 loss masks exactly the reference
    cells' tokens, and sampling writes back and decodes the references up to the VAE. (With the factor hard-coded
    to 8 the sampler's noise had a quarter of the tokens and failed: checked.)"""
    module = make_module(base_4x)
    assert module.backbone.vae_scale_factor == 4
    out = module.losses(batch, step=3)
    tokens = (2 * CELL // 8) ** 2  # dual mode: 2x2 grids of CELL-px frames, 8 px per token
    assert out["mask"].shape == (len(batch["pixels"]), tokens) and torch.isfinite(out["fm"]).all()
    assert out["mask"].sum(1).tolist() == [tokens // 2] * len(batch["pixels"])  # 2 of 4 cells: the references
    refs = {0: frame(-0.5), 3: frame(0.5)}
    latents, x_ref, mask = sample_reference_latents(
        module.backbone, ["a lego tower"], [refs], 2, 2, CELL, num_inference_steps=2, seeds=[0]
    )
    assert latents.shape[1] == (2 * CELL // 8) ** 2 and torch.equal(latents[mask], x_ref[mask].to(latents))
    frames = sample_with_references(module.backbone, "a lego tower", refs, 2, 2, CELL, num_inference_steps=2)
    assert len(frames) == 4 and all(f.size == (CELL, CELL) for f in frames)
    for k, ref in refs.items():
        round_trip = module.backbone.decode_latents(module.backbone.encode_images(to_tensor(ref, CELL)[None]))[0]
        assert (to_tensor(frames[k], CELL) - round_trip).abs().max() <= 1 / 127.5 + 1e-4, k


# ---------------------------------------------------------------- the CLI


def stage2_config(tmp_path, tiny_base, shards, stage1, max_steps, mode="dual"):
    path = small_config(tmp_path, tiny_base, shards, max_steps=max_steps, every=1)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"] = {
        "class_path": "pm_lightning.training.stage2.Stage2Module",
        "init_args": {
            "base": tiny_base,
            "stage1": stage1,
            "mode": mode,
            "cell": CELL,
            "max_gap": 2,
            "adapter": {"kind": "lora", "rank": 4},
            "optimizer": {"name": "came", "lr": 1e-3},
        },
    }
    cfg["trainer"]["callbacks"].append({"class_path": "pm_lightning.training.callbacks.LoraExport"})
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_cli_trains_exports_and_resumes_exactly(tmp_path, tiny_base, tiny_shards, stage1_file):
    straight = stage2_config(tmp_path / "straight", tiny_base, tiny_shards, stage1_file, max_steps=3)
    assert fit.main(["--config", str(straight)]) == 0
    first = stage2_config(tmp_path / "resumed", tiny_base, tiny_shards, stage1_file, max_steps=2)
    assert fit.main(["--config", str(first)]) == 0
    assert fit.main(["--config", str(first), "--trainer.max_steps", "3", "--ckpt_path", "last"]) == 0
    load = lambda p: torch.load(p / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    a, b = load(tmp_path / "straight"), load(tmp_path / "resumed")
    assert a["state_dict"].keys() == b["state_dict"].keys() and all("lora" in k for k in a["state_dict"])
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["hyper_parameters"]["stage"] == 2 and a["hyper_parameters"]["mode"] == "dual"
    assert (tmp_path / "straight" / "run" / "lora" / "final" / "lora.safetensors").is_file()


# ---------------------------------------------------------------- batched insertions and step caches


def test_batched_insertions_equal_one_by_one(dual):
    """Every insertion of a round in one sampler call (chunked by max_batch) gives, per seed, the frames of
    sampling it alone."""
    from pm_lightning.inference.reference_sampling import insert_between_batch

    frames = [frame(v) for v in (-0.6, -0.2, 0.2, 0.6)]
    requests = [(frames[0], frames[1], 2), (frames[1], frames[2], 1), (frames[2], frames[3], 2)]
    seeds = [11, 12, 13]
    batched = insert_between_batch(dual.backbone, requests, "a lego tower", seeds, CELL, 3, max_batch=2)
    alone = [
        insert_between(dual.backbone, a, b, "a lego tower", n=n, cell=CELL, num_inference_steps=3, seed=s)
        for (a, b, n), s in zip(requests, seeds)
    ]
    assert [len(x) for x in batched] == [2, 1, 2]
    for got, want in zip(batched, alone):
        for g, w in zip(got, want):
            diff = np.abs(np.asarray(g, np.int16) - np.asarray(w, np.int16))
            assert diff.max() <= 1, diff.max()  # identical up to 8-bit rounding of float reduction order


def _block_calls(transformer):
    """Count computations of the last block's attention query projection: a cached step calls the block (the hook
    replaces its forward) but never computes inside it."""
    counter = {"n": 0}
    handle = transformer.single_transformer_blocks[-1].attn.to_q.register_forward_hook(
        lambda *a: counter.__setitem__("n", counter["n"] + 1)
    )
    return counter, handle


@pytest.mark.parametrize("mode", ["first-block", "taylorseer"])
def test_step_caches_skip_work_but_never_the_reference_write_back(dual, mode):
    from pm_lightning.inference.cache import CacheConfig, transformer_cache

    refs = [{0: frame(-0.5), 3: frame(0.5)}]
    args = (dual.backbone, ["a lego tower"], refs, 2, 2, CELL)
    counter, handle = _block_calls(dual.backbone.transformer)
    try:
        plain, _, _ = sample_reference_latents(*args, num_inference_steps=8, seeds=[0])
        full_calls, counter["n"] = counter["n"], 0
        cfg = CacheConfig(mode, threshold=10.0, interval=3, warmup=2)  # first-block: skip whenever it may
        with transformer_cache(dual.backbone.transformer, cfg):
            cached, x_ref, mask = sample_reference_latents(*args, num_inference_steps=8, seeds=[0])
        cached_calls = counter["n"]
    finally:
        handle.remove()
    assert full_calls == 8 and cached_calls < full_calls  # the cache skipped work
    assert torch.equal(cached[mask], x_ref[mask].to(cached))  # references written back on every step, cached or not
    assert not torch.equal(cached, plain)  # the cached result is an approximation
    assert not getattr(dual.backbone.transformer, "_cache_config", None)  # disabled again after the block


def test_first_block_cache_at_threshold_zero_equals_no_cache(dual):
    """The hooks compose with the LoRA layers: never skipping, the cached sampler gives the uncached latents."""
    from pm_lightning.inference.cache import CacheConfig, transformer_cache

    args = (dual.backbone, ["a lego tower"], [{0: frame(-0.5), 3: frame(0.5)}], 2, 2, CELL)
    plain, _, _ = sample_reference_latents(*args, num_inference_steps=4, seeds=[3])
    with transformer_cache(dual.backbone.transformer, CacheConfig("first-block", threshold=0.0)):
        cached, _, _ = sample_reference_latents(*args, num_inference_steps=4, seeds=[3])
    assert torch.allclose(cached, plain, atol=1e-5)
