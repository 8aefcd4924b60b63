"""Write failures: outputs are replaced atomically; a failed sample grid or LoRA export is reported and training
goes on; a failed checkpoint stops the run with the file named and the earlier checkpoints intact."""

from __future__ import annotations

import pytest
import torch

from pm_lightning import fit
from pm_lightning.core.atomic import WriteFailed, atomic_path
from tests.test_fit import small_config, with_outputs

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def test_atomic_path_keeps_the_previous_file_on_any_failure(tmp_path):
    target = tmp_path / "out" / "file.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"v1")
    with pytest.raises(WriteFailed, match=str(target)), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"v1" and sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_lora_export_is_atomic_and_loads_in_diffusers(tmp_path, tiny_base):
    from diffusers import FluxPipeline

    from pm_lightning.models.adapter_config import AdapterConfig
    from pm_lightning.models.adapters import add_adapters
    from pm_lightning.models.lora_files import export_domain_lora

    pipe = FluxPipeline.from_pretrained(tiny_base)
    add_adapters(pipe.transformer, AdapterConfig(kind="masked", rank=4, num_domains=2))
    out = export_domain_lora(pipe.transformer, 0, tmp_path / "lego.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lego.safetensors"]  # no temporary file left
    FluxPipeline.from_pretrained(tiny_base).load_lora_weights(str(out))


def run_config(tmp_path, tiny_base, tiny_shards, every=2, max_steps=4):
    return with_outputs(small_config(tmp_path, tiny_base, tiny_shards, max_steps=max_steps, every=every), every=2)


def test_sample_and_lora_write_failures_do_not_stop_training(tmp_path, tiny_base, tiny_shards, monkeypatch, caplog):
    import pm_lightning.training.callbacks.lora_export as lora_export
    import pm_lightning.training.callbacks.samples as samples

    def full_disk(path):
        raise WriteFailed(f"writing {path} failed ([Errno 28] No space left on device); the previous file is intact")

    real_atomic = samples.atomic_path

    def failing_png(path):
        if str(path).endswith(".png"):
            full_disk(path)
        return real_atomic(path)

    monkeypatch.setattr(samples, "atomic_path", failing_png)
    monkeypatch.setattr(lora_export, "export_domain_lora", lambda t, i, path, *a, **k: full_disk(path))
    cfg = run_config(tmp_path, tiny_base, tiny_shards)
    assert fit.main(["--config", str(cfg)]) == 0  # the run finished
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    text = caplog.text
    assert "sample grids step-000002" in text and "No space left" in text and "training continues" in text
    assert "LoRA export" in text and "python -m pm_lightning.export" in text


def test_a_full_disk_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(
    tmp_path, tiny_base, tiny_shards, capsys
):
    """A real failing write at a byte in the middle of the file: RLIMIT_FSIZE (what `ulimit -f` sets) at half the
    checkpoint's size, so the kernel refuses the write past it (EFBIG; Python ignores SIGXFSZ). The run stops with exit
    code 4 naming the file; `last.ckpt` is the previous one, whole; no temporary file is left; the resume finishes.
    Checked red: writing the checkpoint in place (`AtomicCheckpointIO` without `atomic_path`) leaves step 4's
    checkpoint truncated, and without atomic_path's clean-up its `.<name>.tmp-<pid>` stays. About 40 s on 2 cores."""
    import resource

    cfg = run_config(tmp_path, tiny_base, tiny_shards, every=2, max_steps=2)
    assert fit.main(["--config", str(cfg)]) == 0
    ckpts = tmp_path / "run" / "checkpoints"
    size = (ckpts / "last.ckpt").stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))  # lowered soft limit: raised back below
    try:
        code = fit.main(["--config", str(cfg), "--ckpt_path", "last", "--trainer.max_steps", "4"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err
    assert code == 4 and "writing checkpoint" in err and "step=4" in err and "File too large" in err
    assert "--ckpt_path last" in err
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2  # whole
    for path in ckpts.glob("*.ckpt"):  # no checkpoint left half-written (step=4's stopped at the limit)
        torch.load(path, map_location="cpu", weights_only=True)
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert fit.main(["--config", str(cfg), "--ckpt_path", "last", "--trainer.max_steps", "4"]) == 0
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4


def test_text_cache_failures_cost_the_cache_not_the_run(tmp_path, tiny_base, monkeypatch, caplog):
    """A full disk while writing the text cache: embeddings still come back, nothing half-written is left; a
    damaged cache entry is encoded again."""
    import pm_lightning.models.text_embedding_cache as cache_module
    from pm_lightning.models.backbone import FluxBackbone

    plain = FluxBackbone.from_pretrained(tiny_base)
    want = plain.encode_text(["a lego tower"])[0]
    cached = FluxBackbone.from_pretrained(tiny_base, text_cache_dir=tmp_path / "cache")
    real = cache_module.atomic_path

    def full_disk(path):
        raise WriteFailed(f"writing {path} failed ([Errno 28] No space left on device); the previous file is intact")

    monkeypatch.setattr(cache_module, "atomic_path", full_disk)
    got = cached.encode_text(["a lego tower"])[0]
    assert torch.equal(got, want) and "No space left" in caplog.text
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    monkeypatch.setattr(cache_module, "atomic_path", real)
    cached.encode_text(["a lego tower"])
    (entry,) = list((tmp_path / "cache").rglob("*.safetensors"))
    entry.write_bytes(b"damaged")
    assert torch.equal(cached.encode_text(["a lego tower"])[0], want) and "unreadable" in caplog.text
    assert entry.stat().st_size > 100  # rewritten whole
