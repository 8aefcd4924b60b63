"""`python -m pm_lightning.fit`: config handling, missing weights, exact resume, saved configs, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pm_lightning import fit
from tests.conftest import REPO, TRAIN_DOMAINS

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments").glob("*.yaml"))
ABLATIONS = sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments" / "ablations").glob("*.yaml"))
STRATEGIES = sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments" / "strategies").glob("*.yaml"))


def small_config(tmp_path: Path, tiny_base: str, shards: dict, max_steps: int, every: int = 2, **model) -> Path:
    """A tiny CPU run config: no logger, checkpoints every `every` steps, 96-px grids."""
    cfg = {
        "experiment": "test",
        "seed_everything": 0,
        "validate_first": False,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
            "default_root_dir": str(tmp_path / "run"),
            "callbacks": [
                {
                    "class_path": "pm_lightning.training.callbacks.RunCheckpoint",
                    "init_args": {"every_n_train_steps": every, "save_top_k": -1},
                }
            ],
        },
        "model": {
            "class_path": "pm_lightning.training.stage1.Stage1Module",
            "init_args": {
                "base": tiny_base,
                "adapter": {"kind": "masked", "rank": 4},
                "alignment": {"enabled": True},
                "optimizer": {"name": "came", "lr": 1e-3},
                **model,
            },
        },
        "data": {
            "train_shards": shards["train"],
            "val_shards": None,
            "domains": TRAIN_DOMAINS,
            "resolution": 96,
            "batch_size": 2,
            "num_workers": 0,
            "shuffle_buffer": 8,
            "resampled": True,
            "samples_per_epoch": 6,  # 3 batches per epoch: resumes cross epoch boundaries
        },
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def with_outputs(path: Path, every: int, at_start: bool = False, **trainer) -> Path:
    """Add LoRA exports and 64-px sample grids (every `every` steps) to a `small_config`, plus trainer overrides."""
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"].update(trainer)
    cfg["trainer"]["callbacks"] += [
        {
            "class_path": "pm_lightning.training.callbacks.SampleGrids",
            "init_args": {
                "prompts": [{"domain": "lego", "caption": "a lego tower"}],
                "every_n_steps": every,
                "resolution": 64,
                "num_inference_steps": 2,
                "at_start": at_start,
            },
        },
        {"class_path": "pm_lightning.training.callbacks.LoraExport", "init_args": {"every_n_train_steps": every}},
    ]
    path.write_text(yaml.safe_dump(cfg))
    return path


def adapters_of(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("config", CONFIGS)
def test_print_config_works_for_every_experiment(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        fit.main(["--config", config, "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] in (
        "pm_lightning.training.stage1.Stage1Module",
        "pm_lightning.training.stage2.Stage2Module",
    )
    assert printed["data"]["domains"] and "domains" not in printed["model"]["init_args"]  # linked from data


@pytest.mark.parametrize("overlay", ABLATIONS + STRATEGIES)
def test_ablation_and_strategy_overlays_parse(overlay, capsys):
    with pytest.raises(SystemExit):
        fit.main(["--config", "experiments/fabric_toys.yaml", "--config", overlay, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    overlay_cfg = yaml.safe_load(Path(REPO / overlay).read_text())
    wanted, got = overlay_cfg.get("model", {}).get("init_args", {}), printed["model"]["init_args"]
    if "adapter" in wanted:  # an ablation row: only kind and alignment change, rank stays the base's
        assert got["adapter"]["kind"] == wanted["adapter"]["kind"] and got["adapter"]["rank"] == 64
        assert got["alignment"]["enabled"] == wanted["alignment"]["enabled"]
    if "trainer" in overlay_cfg:  # a strategy
        assert printed["trainer"]["strategy"]["class_path"] == overlay_cfg["trainer"]["strategy"]["class_path"]
    assert all(got[k] == v for k, v in wanted.items() if not isinstance(v, dict))


def test_unknown_key_fails_at_load_naming_it(monkeypatch, capsys):
    from pm_lightning.models import backbone

    def never(*a, **k):
        raise AssertionError("a model was built before the config was validated")

    monkeypatch.setattr(backbone.FluxBackbone, "from_pretrained", never)
    with pytest.raises(SystemExit) as exit_:
        fit.main(["--config", "experiments/tiny.yaml", "--model.init_args.adapter.rnak", "8"])
    assert exit_.value.code != 0
    assert "rnak" in capsys.readouterr().err


@pytest.mark.slow
def test_flux_dev_config_without_weights_stops_with_instructions(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pm_lightning.fit", "--config", "experiments/fabric_toys.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    for needle in (
        "black-forest-labs/FLUX.1-dev",
        "hf auth login",
        "HF_HOME",
        "local diffusers-format directory",
    ):
        assert needle in proc.stderr
    assert not (REPO / "runs" / "fabric_toys" / "checkpoints").exists()


def test_resume_gives_the_same_adapters_as_a_straight_run(tmp_path, tiny_base, tiny_shards):
    """N steps, stop, resume to N + M == N + M straight (the stop is mid-epoch: 3 batches per epoch)."""
    straight = small_config(tmp_path / "straight", tiny_base, tiny_shards, max_steps=5)
    assert fit.main(["--config", str(straight)]) == 0
    first = small_config(tmp_path / "resumed", tiny_base, tiny_shards, max_steps=2)
    assert fit.main(["--config", str(first)]) == 0
    assert fit.main(["--config", str(first), "--trainer.max_steps", "5", "--ckpt_path", "last"]) == 0
    a = adapters_of(tmp_path / "straight" / "run" / "checkpoints" / "last.ckpt")
    b = adapters_of(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    two = adapters_of(tmp_path / "resumed" / "run" / "checkpoints" / "epoch=0-step=2.ckpt")
    assert any(not torch.equal(two[k], b[k]) for k in b)  # the resumed run did train


def test_checkpoint_holds_trainables_optimizer_loops_and_config(tmp_path, tiny_base, tiny_shards):
    cfg = small_config(tmp_path, tiny_base, tiny_shards, max_steps=2)
    assert fit.main(["--config", str(cfg)]) == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all("lora" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and "loops" in ckpt
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "consumed": 2}]
    saved = yaml.safe_load(ckpt["config"])
    assert saved["model"]["init_args"]["adapter"]["rank"] == 4
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["resolution"] == 96


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """Lightning writes through an fsspec transaction: a failed write never replaces a good checkpoint."""
    import fsspec.implementations.local as local
    from lightning.fabric.utilities.cloud_io import _atomic_save

    path = tmp_path / "last.ckpt"
    _atomic_save({"step": 1, "w": torch.ones(1000)}, path)

    def broken_write(self, data):
        raise OSError("disk full (simulated kill during the write)")

    monkeypatch.setattr(local.LocalFileOpener, "write", broken_write)
    with pytest.raises(OSError):
        _atomic_save({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_adapters(tmp_path, tiny_base, tiny_shards):
    cfg = small_config(tmp_path, tiny_base, tiny_shards, max_steps=3, every=100)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PM_DUMP_DIR=str(tmp_path / "dump"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pm_lightning.fit",
            "--config",
            str(cfg),
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.callbacks+=tests.ddp_probe.DumpAdapters",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "dump" / "rank0.pt")
    rank1 = torch.load(tmp_path / "dump" / "rank1.pt")
    assert rank0["step"] == rank1["step"] == 3
    assert rank0["weights"].keys() == rank1["weights"].keys()
    for key in rank0["weights"]:
        assert torch.equal(rank0["weights"][key], rank1["weights"][key]), key
    assert rank0["batch_keys"] != rank1["batch_keys"]  # the ranks saw different data


def test_exported_checkpoint_lora_loads_in_stock_flux_pipeline(tmp_path, tiny_base, tiny_shards):
    """The export CLI reads a real Stage-1 checkpoint; stock diffusers loads the file with every key."""
    from diffusers import FluxPipeline

    from pm_lightning import export

    cfg = small_config(tmp_path, tiny_base, tiny_shards, max_steps=1, every=1)
    assert fit.main(["--config", str(cfg)]) == 0
    out = tmp_path / "lego.safetensors"
    export.main(["--ckpt", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--domain", "lego", "--out", str(out)])
    from safetensors.torch import load_file

    pipe = FluxPipeline.from_pretrained(tiny_base)
    pipe.load_lora_weights(str(out))
    adapted = [m for m in pipe.transformer.modules() if hasattr(m, "lora_A") and m.lora_A]
    keys = load_file(out)
    assert len(keys) == 2 * len(adapted) > 0  # every A and B in the file found its layer


def test_logs_loss_terms_lambda_lr_and_grad_norm(tmp_path, tiny_base, tiny_shards):
    import csv

    cfg = small_config(tmp_path, tiny_base, tiny_shards, max_steps=3, every=100)
    logger = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "%s"}}' % (
        tmp_path / "csv"
    )
    assert fit.main(["--config", str(cfg), "--trainer.logger", logger, "--trainer.log_every_n_steps", "1"]) == 0
    rows = list(csv.DictReader(open(next((tmp_path / "csv").rglob("metrics.csv")))))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"loss/fm", "loss/align", "loss/total", "lambda", "train/lr", "train/grad_norm"} <= logged
    assert all(float(r["train/grad_norm"]) > 0 for r in rows if r.get("train/grad_norm"))


def test_validation_loss_is_logged_per_domain_held_out_ones_included(tmp_path, tiny_base, tiny_shards):
    import csv

    cfg = small_config(tmp_path, tiny_base, tiny_shards, max_steps=1, every=100)
    logger = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "%s"}}' % (
        tmp_path / "csv"
    )
    args = [
        "--config",
        str(cfg),
        "--trainer.logger",
        logger,
        "--data.val_shards",
        tiny_shards["val"],
        "--data.val_batch_size",
        "12",
        "--trainer.limit_val_batches",
        "3",
        "--validate_first",
        "true",
    ]
    assert fit.main(args) == 0
    rows = list(csv.DictReader(open(next((tmp_path / "csv").rglob("metrics.csv")))))
    logged = {k: float(v) for row in rows for k, v in row.items() if v and k.startswith("val/")}
    per_domain = {k.split("/")[-1] for k in logged if k.startswith("val/loss_fm/")}
    assert {"origami", "mosaic"} & per_domain and set(TRAIN_DOMAINS) & per_domain  # held-out and training domains
    assert "val/loss_fm" in logged and all(v > 0 for v in logged.values())
