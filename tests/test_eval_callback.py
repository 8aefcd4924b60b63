"""EvaluationCallback: scores JSON, per-domain metrics to any logger, W&B tables offline, judge via a local stub."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from PIL import Image

from pm_lightning.training.callbacks.evaluation import TABLE_COLUMNS, EvaluationCallback, domain_metrics
from tests.openai_stub import OpenAIStub, Reply

KEY = "sk-test-SECRET-callback-42"
PROMPTS = [
    {"domain": "lego", "caption": "a red lego tower"},
    {"domain": "lego", "caption": "a blue lego wall"},
    {"domain": "painting", "caption": "an oil painting of a tree"},
]
COLORS = ["red", "blue", "green"]


class FakeEncoders:
    """Deterministic stand-in for pm_lightning.models.encoders.Encoders: the mean colour vs a fixed text vector."""

    def image_embeddings(self, images):
        x = torch.tensor([[c / 255 + 0.1 for c in im.convert("RGB").resize((1, 1)).getpixel((0, 0))] for im in images])
        return F.normalize(x, dim=-1)  # (N, 3)

    def text_embeddings(self, texts):
        return F.normalize(torch.ones(len(texts), 3), dim=-1)  # (N, 3)


class RecordingLogger(Logger):
    """Keeps every log_metrics call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[dict, int | None]] = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append((dict(metrics), step))


class FakeModule(torch.nn.Module):
    """What SampleGrids.render touches on a Stage1Module."""

    domains = ["lego", "painting"]
    backbone = SimpleNamespace(
        pipeline=lambda: SimpleNamespace(set_progress_bar_config=lambda **kw: None), max_sequence_length=None
    )
    transformer = torch.nn.Linear(1, 1)


def trainer(tmp_path: Path, loggers=(), step: int = 10, rank_zero: bool = True, world_size: int = 1):
    return SimpleNamespace(
        global_step=step,
        loggers=list(loggers),
        default_root_dir=str(tmp_path),
        is_global_zero=rank_zero,
        world_size=world_size,
    )


def grids() -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), c) for c in COLORS]


def callback(tmp_path: Path, **kw) -> EvaluationCallback:
    cb = EvaluationCallback(prompts=PROMPTS, dirpath=str(tmp_path / "samples"), **kw)
    cb._encoders = FakeEncoders()
    return cb


def test_scores_json_and_per_domain_metrics(tmp_path):
    rec = RecordingLogger()
    cb = callback(tmp_path)
    cb.on_samples(trainer(tmp_path, [rec]), FakeModule(), grids(), "step-000010")
    report = json.loads((tmp_path / "samples" / "step-000010.json").read_text())
    assert report["step"] == 10 and [r["domain"] for r in report["rows"]] == ["lego", "lego", "painting"]
    clip = [r["clip_score"] for r in report["rows"]]
    assert all(0 < c <= 100 for c in clip)
    assert report["rows"][0] == {
        "domain": "lego",
        "prompt": "a red lego tower",
        "clip_score": clip[0],
        "accuracy": None,
        "coherence": None,
        "usability": None,
        "judge_error": None,
    }
    ((metrics, step),) = rec.calls
    assert step == 10
    assert metrics["eval/lego/clip_score"] == pytest.approx((clip[0] + clip[1]) / 2)
    assert metrics["eval/painting/clip_score"] == pytest.approx(clip[2])
    assert metrics["eval/mean/clip_score"] == pytest.approx((metrics["eval/lego/clip_score"] + clip[2]) / 2)
    assert not any("coherence" in k for k in metrics)  # judge off: no judge metrics
    assert report["metrics"] == metrics


def test_no_logger_only_writes_json(tmp_path):
    cb = callback(tmp_path)
    cb.on_samples(trainer(tmp_path, []), FakeModule(), grids(), "final")
    assert (tmp_path / "samples" / "final.json").is_file()
    assert cb.last_scores["metrics"]["eval/mean/clip_score"] > 0


def test_domain_metrics_skip_missing_scores():
    rows = [
        {"domain": "a", "clip_score": 30.0, "coherence": 4.0},
        {"domain": "a", "clip_score": 20.0, "coherence": None},
        {"domain": "b", "clip_score": 10.0, "coherence": 2.0},
    ]
    m = domain_metrics(rows)
    assert m == {
        "eval/a/clip_score": 25.0,
        "eval/a/coherence": 4.0,
        "eval/b/clip_score": 10.0,
        "eval/b/coherence": 2.0,
        "eval/mean/clip_score": 17.5,
        "eval/mean/coherence": 3.0,
    }


def test_render_saves_png_and_json_on_rank_zero_only(tmp_path, monkeypatch):
    import pm_lightning.inference.grid_sampling as pipeline

    monkeypatch.setattr(pipeline, "generate_grids", lambda pipe, prompts, *a: grids()[: len(prompts)])
    cb = callback(tmp_path)
    assert cb.render(trainer(tmp_path, rank_zero=False), FakeModule(), "step-000005") is None
    assert not (tmp_path / "samples").exists()
    png = cb.render(trainer(tmp_path, step=5), FakeModule(), "step-000005")
    assert png.is_file() and png.with_suffix(".json").is_file()


def test_under_fsdp2_every_rank_samples_and_rank_zero_alone_writes(tmp_path, monkeypatch):
    """A sharded forward needs every rank: rank 1 samples too (else rank 0 hangs), but writes and logs nothing."""
    import pm_lightning.inference.grid_sampling as pipeline
    import pm_lightning.training.strategies as strategies

    sampled = []
    monkeypatch.setattr(pipeline, "generate_grids", lambda pipe, prompts, *a: sampled.append(1) or grids())
    cb = callback(tmp_path / "ddp")
    assert cb.render(trainer(tmp_path / "ddp", rank_zero=False, world_size=2), FakeModule(), "s") is None
    assert sampled == []  # replicated (DDP) weights: rank 0 samples alone
    monkeypatch.setattr(strategies, "is_sharded", lambda module: True)
    rec = RecordingLogger()
    cb = callback(tmp_path)
    assert cb.render(trainer(tmp_path, [rec], rank_zero=False, world_size=2), FakeModule(), "s") is None
    assert sampled == [1] and not (tmp_path / "samples").exists() and not rec.calls


def test_judge_scores_reach_json_and_logger(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    answers = [Reply('{"Accuracy": 4, "Coherence": 5, "Usability": 3}')]
    with OpenAIStub(answers) as stub:
        rec = RecordingLogger()
        cb = callback(tmp_path, judge=True, judge_base_url=stub.base_url, judge_model="judge-x", judge_timeout=5.0)
        cb.on_samples(trainer(tmp_path, [rec]), FakeModule(), grids(), "step-000010")
    assert len(stub.requests) == 3 and {r["body"]["model"] for r in stub.requests} == {"judge-x"}
    metrics = rec.calls[0][0]
    assert metrics["eval/lego/coherence"] == 5.0 and metrics["eval/painting/usability"] == 3.0
    assert metrics["eval/mean/accuracy"] == 4.0
    files = list((tmp_path / "samples").rglob("*.json"))
    assert len(files) == 4  # the scores JSON + 3 judge cache entries
    assert all(KEY not in f.read_text() for f in files)


def test_failing_judge_never_stops_training(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with OpenAIStub([Reply(status=401)]) as stub:
        rec = RecordingLogger()
        cb = callback(tmp_path, judge=True, judge_base_url=stub.base_url)
        cb.on_samples(trainer(tmp_path, [rec]), FakeModule(), grids(), "step-000010")
    rows = cb.last_scores["rows"]
    assert all(r["coherence"] is None and "401" in r["judge_error"] for r in rows)
    assert all(KEY not in r["judge_error"] for r in rows)
    assert "eval/mean/clip_score" in rec.calls[0][0] and "eval/mean/coherence" not in rec.calls[0][0]


def test_offline_wandb_gets_grids_tables_and_metrics(tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    import pm_lightning.inference.grid_sampling as pipeline

    monkeypatch.setattr(pipeline, "generate_grids", lambda pipe, prompts, *a: grids()[: len(prompts)])
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR"):  # table artifacts stage here
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="pm-test", save_dir=str(tmp_path), offline=True)
    cb = callback(tmp_path)
    try:
        cb.render(trainer(tmp_path, [logger]), FakeModule(), "step-000010")
        run_dir = Path(logger.experiment.dir).parent
    finally:
        wandb.finish()
    files = run_dir / "files" / "media"
    assert len(list((files / "images").rglob("*.png"))) == len(PROMPTS)  # the grids (SampleGrids.log_image)
    tables = {p.parent.name: p for p in (files / "table" / "eval").rglob("*.table.json")}
    assert set(tables) == {"lego", "painting"}
    lego = json.loads(tables["lego"].read_text())
    assert lego["columns"] == TABLE_COLUMNS and len(lego["data"]) == 2
    (history,) = run_dir.glob("*.wandb")  # offline history: scalars and table references, protobuf-encoded
    assert b"eval/painting/clip_score" in history.read_bytes() and b"eval/mean/clip_score" in history.read_bytes()


def test_real_tiny_encoders(tmp_path):
    from pm_lightning.core.paths import tiny_eval_dir

    if not (tiny_eval_dir() / "clip" / "open_clip_config.json").is_file():
        pytest.skip("data/tiny-eval not built (make tiny-eval)")
    cb = EvaluationCallback(prompts=PROMPTS, dirpath=str(tmp_path / "samples"))
    cb.on_samples(trainer(tmp_path), FakeModule(), grids(), "final")
    enc = cb._encoders
    cb.on_samples(trainer(tmp_path), FakeModule(), grids(), "final")
    assert cb._encoders is enc  # loaded once
    assert all(0 <= r["clip_score"] <= 100 for r in cb.last_scores["rows"])
