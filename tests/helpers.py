"""Shared test helpers: a tiny random Flux transformer and matching forward inputs, a stock FluxPipeline around a
transformer alone, and the bench scripts as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from pm_lightning.models.variants import TINY_FLUX_TRANSFORMER

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"

# the tiny Flux's transformer, smaller still for unit tests (width 2 x 16) and with distinct text widths (joint 32,
# pooled 24), so a swapped text axis fails
TINY_TRANSFORMER = dict(
    TINY_FLUX_TRANSFORMER,
    num_single_layers=3,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=24,
    axes_dims_rope=(4, 6, 6),
)


def tiny_transformer(seed: int = 0, **overrides) -> FluxTransformer2DModel:
    """A random Flux transformer with 2 double and 3 single blocks (fp32, eval mode)."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**{**TINY_TRANSFORMER, **overrides}).eval()


def image_ids(h: int, w: int) -> torch.Tensor:
    """(h*w, 3) Flux image position ids (0, row, col) for an h x w token grid."""
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).float()


def random_inputs(
    model: FluxTransformer2DModel, batch: int = 2, h: int = 3, w: int = 3, txt: int = 5, seed: int = 1
) -> dict:
    """Forward kwargs for `model` with an h x w grid of image tokens and `txt` text tokens."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    inputs = dict(
        hidden_states=torch.randn(batch, h * w, cfg.in_channels, generator=g),  # (B, N, 64)
        encoder_hidden_states=torch.randn(batch, txt, cfg.joint_attention_dim, generator=g),  # (B, T, D)
        pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=g),  # (B, P)
        timestep=torch.rand(batch, generator=g),  # (B,) in [0, 1]
        img_ids=image_ids(h, w),
        txt_ids=torch.zeros(txt, 3),
        return_dict=False,
    )
    if cfg.guidance_embeds:
        inputs["guidance"] = torch.ones(batch)
    return inputs


def bare_pipeline(transformer) -> FluxPipeline:
    """A stock FluxPipeline around `transformer` alone (no VAE / text encoders: LoRA loading needs none)."""
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )


def load_bench(script: str, name: str | None = None):
    """bench/<script> as a module (registered under `name`, as dataclasses look their module up by name); the bench
    folder goes on sys.path, since the scripts import their docs_section helper."""
    name = name or Path(script).stem
    sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def wandb_records(run_folder: Path, timeout: float = 30.0) -> list:
    """Every record of a finished offline W&B run, once its exit record is on disk (wandb-core writes from its own
    process, a moment after `finish()` returns; see tests/test_run_dir.settled_listing)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_file(run_folder)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def read_wandb_file(run_folder: Path) -> list:
    """Every record of an offline W&B run (`<run_folder>/run-<id>.wandb`), parsed by wandb's own protobuf
    (`wandb.proto.wandb_internal_pb2.Record`). wandb 0.31 ships no Python reader of the file, which wandb-core writes
    in LevelDB's log framing: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks, each with a
    7-byte header (crc32, length uint16 LE, type: 1 full, 2 first, 3 middle, 4 last); a block's last < 7 bytes are
    padding."""
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = Path(run_folder).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is no W&B transaction log"
    block, pos, records, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding at the end of a block
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def assert_clean_exit(proc, keep: Path) -> None:
    """A `fit` subprocess exited 0; its whole stderr is kept in `keep`/stderr-N.txt (N counts the calls there).

    The failure message starts "exit N; " (tests/conftest.py's SIGNAL_DEATH reruns a test once when N < 0: a process
    killed by a signal) and ends with the stderr's last 4000 characters.
    """
    kept = len(list(keep.glob("stderr-*.txt")))
    path = keep / f"stderr-{kept}.txt"
    path.write_text(proc.stderr)
    assert proc.returncode == 0, f"exit {proc.returncode}; whole stderr in {path}\n" + proc.stderr[-4000:]
