"""Inference at scale: device / dtype / sampler defaults (`inference/runtime.py`) and the stage-1 file a stage-2 or
ReCraft LoRA records in its metadata (`models/lora_files.py`), through `generate` on CPU in bfloat16."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pm_lightning import generate
from pm_lightning.core.config_files import load_config
from pm_lightning.core.errors import BadInput
from pm_lightning.export import main as export_main
from pm_lightning.inference.request import GenerationRequest
from pm_lightning.inference.runtime import Runtime
from pm_lightning.inference.session import stage1_under
from pm_lightning.models.lora_files import (
    STAGE1_KEY,
    STAGE1_SHA_KEY,
    file_sha256,
    read_stage1_metadata,
    stage1_metadata,
)
from pm_lightning.training.precision import base_dtype
from tests.test_export import make_checkpoint
from tests.test_generate import lora_file  # noqa: F401 - the module fixture, reused

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


def test_runtime_defaults_and_refusals():
    rt = Runtime.resolve("cpu")
    assert (rt.device, rt.dtype) == ("cpu", torch.float32)  # fp32 on the CPU by default
    assert Runtime.resolve("cpu", "bf16").dtype == torch.bfloat16
    assert Runtime.resolve("cpu", "bfloat16").describe()["dtype"] == "bfloat16"
    if not torch.cuda.is_available():
        assert Runtime.resolve().device == "cpu"
        with pytest.raises(BadInput, match="no CUDA device"):
            Runtime.resolve("cuda")
    with pytest.raises(BadInput, match="--dtype"):
        Runtime.resolve("cpu", "int8")
    with pytest.raises(BadInput, match="needs --device cuda"):
        Runtime.resolve("cpu", cpu_offload=True)


@pytest.mark.parametrize(
    "base, want",
    [
        ("flux-dev", (28, 3.5)),
        ("black-forest-labs/FLUX.1-dev", (28, 3.5)),
        ("flux-schnell", (4, 0.0)),
        ("tiny", (20, 1.0)),
        ("some/other-flux", (28, 3.5)),  # FluxPipeline's own defaults
    ],
)
def test_sampler_defaults_come_from_the_variant(base, want):
    req = GenerationRequest("a tower", Path("out"), base=base)
    assert (req.num_inference_steps, req.guidance) == want
    given = GenerationRequest("a tower", Path("out"), base=base, num_inference_steps=3, guidance=2.0)
    assert (given.num_inference_steps, given.guidance) == (3, 2.0)  # flags win


def test_tiny_directory_is_the_tiny_variant(tiny_base):
    from pm_lightning.core.paths import tiny_flux_dir

    req = GenerationRequest("a tower", Path("out"), base=str(tiny_flux_dir()))
    assert (req.num_inference_steps, req.guidance) == (20, 1.0)


def test_export_records_the_stage1_file_of_a_stage2_checkpoint(tmp_path):
    make_checkpoint(tmp_path, "lora")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    stage1 = tmp_path / "unseen.safetensors"
    stage1.write_bytes(b"stage-1 weights")
    ckpt["hyper_parameters"].update(stage1=str(stage1), stage1_sha256=file_sha256(stage1))
    torch.save(ckpt, tmp_path / "stage2.ckpt")
    for fmt in ("diffusers", "kohya"):
        out = tmp_path / f"{fmt}.safetensors"
        export_main(["--ckpt", str(tmp_path / "stage2.ckpt"), "--domain", "lora", "--out", str(out), "--format", fmt])
        assert read_stage1_metadata(out) == ("unseen.safetensors", file_sha256(stage1))  # never an absolute path
        with safe_open(str(out), "pt") as f:
            assert fmt == "kohya" or f.metadata()["format"] == "pt"  # diffusers' own key is kept
    export_main(["--ckpt", str(tmp_path / "last.ckpt"), "--domain", "lego", "--out", str(tmp_path / "s1.safetensors")])
    assert read_stage1_metadata(tmp_path / "s1.safetensors") is None  # a stage-1 run records nothing
    assert stage1_metadata({"stage1": None}) == {STAGE1_KEY: "", STAGE1_SHA_KEY: ""}  # the plain base


def _with_stage1(src, dst, stage1: str, sha: str):
    save_file(load_file(str(src)), str(dst), metadata={"format": "pt", STAGE1_KEY: stage1, STAGE1_SHA_KEY: sha})
    return dst


def test_stage1_under_trusts_the_header_only_on_sha256_and_location(tmp_path, lora_file, monkeypatch):  # noqa: F811
    """A downloaded LoRA's header names a stage-1 file: it is fused only when it is that file (sha256) and lies
    beside the LoRA or under runs/; any other local .safetensors it names is refused, naming --stage2-fuse."""
    monkeypatch.chdir(tmp_path)
    stage1 = shutil.copy(lora_file, tmp_path / "stage1.safetensors")
    sha = file_sha256(stage1)
    lora = _with_stage1(lora_file, tmp_path / "s2.safetensors", "elsewhere/stage1.safetensors", sha)
    assert stage1_under(lora, None, "stage2", False, "--stage2-fuse") == stage1  # found beside the LoRA by name
    assert stage1_under(lora, lora_file, "stage2", False, "--stage2-fuse") == lora_file  # the flag wins
    (tmp_path / "runs" / "r").mkdir(parents=True)
    in_runs = shutil.copy(lora_file, tmp_path / "runs" / "r" / "unseen.safetensors")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    fetched = _with_stage1(lora_file, downloads / "s2.safetensors", "runs/r/unseen.safetensors", sha)
    assert stage1_under(fetched, None, "stage2", False, "--stage2-fuse").resolve() == in_runs  # runs/, same sha256
    changed = _with_stage1(lora_file, tmp_path / "s2b.safetensors", str(stage1), "0" * 64)
    with pytest.raises(BadInput, match="sha256 differs.*--stage2-fuse FILE"):
        stage1_under(changed, None, "stage2", False, "--stage2-fuse")
    secret = tmp_path / "private" / "my-other.safetensors"
    secret.parent.mkdir()
    shutil.copy(lora_file, secret)
    evil = _with_stage1(lora_file, downloads / "evil.safetensors", str(secret), file_sha256(secret))
    with pytest.raises(BadInput, match="outside the LoRA folder and runs/.*--stage2-fuse FILE"):
        stage1_under(evil, None, "stage2", False, "--stage2-fuse")  # right sha256, wrong place: never fused
    unrecorded = _with_stage1(lora_file, tmp_path / "s2e.safetensors", str(stage1), "")
    with pytest.raises(BadInput, match="sha256 not recorded"):
        stage1_under(unrecorded, None, "stage2", False, "--stage2-fuse")
    plain = _with_stage1(lora_file, tmp_path / "s2c.safetensors", "", "")
    assert stage1_under(plain, None, "stage2", True, "--stage2-fuse") is None  # no YAML fallback: recorded
    gone = _with_stage1(lora_file, tmp_path / "s2d.safetensors", str(tmp_path / "gone.safetensors"), "ab" * 32)
    with pytest.raises(BadInput, match="which is not here: .*--stage2-fuse FILE"):
        stage1_under(gone, None, "stage2", False, "--stage2-fuse")
    assert stage1_under(lora_file, None, "stage2", False, "--stage2-fuse") is None  # nothing recorded, not tiny


def test_recraft_in_bfloat16_on_cpu_fuses_the_recorded_stage1(tiny_base, lora_file, tmp_path):  # noqa: F811
    from pm_lightning.data.synthetic_corpus import generate_sequence

    stage1 = shutil.copy(lora_file, tmp_path / "stage1.safetensors")
    recraft = _with_stage1(lora_file, tmp_path / "recraft.safetensors", str(stage1), file_sha256(stage1))
    seq = generate_sequence("cake", 3, 32)
    seq.frames[-1].save(tmp_path / "cake.png")
    out = tmp_path / "out"
    argv = ["--base", tiny_base, "--prompt", seq.caption, "--image", str(tmp_path / "cake.png"), "--frames", "4"]
    argv += ["--recraft", str(recraft), "--num-inference-steps", "2", "--resolution", "64", "--out", str(out)]
    generate.main([*argv, "--device", "cpu", "--dtype", "bfloat16"])
    report = json.loads((out / "report.json").read_text())
    assert report["models"]["recraft_fused_stage1"] == "stage1.safetensors"  # beside the ReCraft LoRA, named
    s = report["settings"]
    assert (s["device"], s["dtype"], s["cpu_offload"], s["vae_tiling"]) == ("cpu", "bfloat16", False, False)
    assert s["guidance"] == 1.0  # the tiny variant's default, not given on the command line
    assert len(list((out / "frames").iterdir())) == 4


def test_generate_refuses_offload_without_a_gpu(tiny_base, tmp_path):
    with pytest.raises(SystemExit, match="needs --device cuda"):
        generate.main(
            ["--base", tiny_base, "--prompt", "x", "--device", "cpu", "--cpu-offload", "--out", str(tmp_path)]
        )


def test_vae_tiling_is_switched_on(tiny_base):
    from pm_lightning.inference.session import Models

    models = Models(tiny_base, Runtime.resolve("cpu", "bfloat16", vae_tiling=True))
    backbone = models.use(None, None)
    assert backbone.vae.use_tiling and backbone.dtype == torch.bfloat16
    assert backbone.pipeline() is backbone.pipeline()  # one pipeline object: its settings hold for every call


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.name)
def test_a_cache_defaults_to_the_dtype_its_training_run_keys_it_by(config):
    """`text_cache` / `latent_cache` without --dtype (`Runtime.for_cache`) write the dtype each shipped experiment's
    run reads its caches in (`training/precision.py`), so their cache ids match without a flag."""
    cfg = load_config(config)
    init = cfg["model"]["init_args"]
    trains_in = base_dtype(cfg["trainer"].get("precision"), None, init.get("dtype"))
    assert Runtime.for_cache("cpu", None, init["base"]).dtype == trains_in
