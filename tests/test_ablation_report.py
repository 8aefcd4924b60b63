"""Collecting an ablation's results (stub metrics), the report (tables, claims, figures, docs copy) and the W&B runs
read back with wandb's own protobuf."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.ablation_fakes import (
    three_seed_plan,
    write_fake_results,
)


def test_collect_gives_rows_by_seeds_by_metrics_with_spread_and_contrasts(tmp_path):
    from pm_lightning.ablation.results import collect

    plan = three_seed_plan()
    jobs = write_fake_results(plan, tmp_path)
    results = collect(plan, tmp_path, jobs, {"lora": {"params_tiny": 10, "params_flux": 20}})
    lora = results["rows"]["lora"]
    assert sorted(lora["seeds"]) == [0, 1, 2] and lora["seeds"][1]["metrics"]["align"] == 52.0
    assert lora["seeds"][0]["metrics"]["train_s"] == 1.5  # the stub's wall time of its one training
    assert results["rows"]["full"]["seeds"][0]["metrics"]["train_s"] == 3.0  # stage 1 + stage 2
    assert "train_s" not in results["rows"]["base"]["seeds"][0]["metrics"]  # trains nothing
    assert lora["summary"]["align"] == {"n": 3, "mean": 50.0, "sd": pytest.approx(2.0)}
    by_name = {c["name"]: c for c in results["contrasts"]}
    unseen = by_name["unseen: mask removed vs plain LoRA"]
    assert unseen["mean"] == pytest.approx(10.0) and unseen["beyond_spread"] is True
    assert unseen["verdict"] == "reproduced in direction"
    even = by_name["full vs stage 1 (Even px)"]
    assert even["mean"] == pytest.approx(0.005) and even["excludes_zero"] is True and even["beyond_spread"] is False
    assert results["missing"] == []


def test_the_report_has_the_tables_the_claims_and_the_figures(tmp_path):
    from pm_lightning.ablation.report import write_report
    from pm_lightning.ablation.results import collect

    plan = three_seed_plan()
    jobs = write_fake_results(plan, tmp_path)
    (jobs[-1].out / "metrics.json").unlink()  # one pair not finished
    results = collect(plan, tmp_path, jobs, {})
    md, js, charts, pictures = write_report(plan, tmp_path, results, "python -m pm_lightning.ablate")
    text = md.read_text()
    assert "## ProcessMaker Table 3 (training domains)" in text and "## Unseen domains" in text
    assert "| Plain LoRA, mixed data | 3 | " in text and "50.00 ± 2.00" in text
    assert "Acc (judge)" not in text  # no judge scores: no judge columns
    per_domain = text.split("## Align per domain", 1)[1].split("##", 1)[0]
    assert (
        "| Align lego | Align origami |" in per_domain
        and "| Base model, no LoRA | 3 | 41.00 ± 2.00 | 30.00 ± 0.00 |" in per_domain
    )
    claims = text.split("## Which claims reproduce", 1)[1].split("## Missing", 1)[0]
    reproduced, rest = claims.split(
        "**Same direction as the paper, not resolved (within the seed spread, or the interval holds 0)**"
    )
    assert (
        "- unseen: mask removed vs plain LoRA (" in reproduced
        and "reproduced in direction (Align (held out) +10" in reproduced
    )
    assert "- full vs stage 1 (Even px) (" in rest  # +0.005 on every seed, yet smaller than either row's spread
    assert "- full vs stage 1 (Even px)" not in reproduced
    assert "Not finished (rerun the same command to resume): full/seed-2" in text
    saved = json.loads(js.read_text())
    assert set(saved["rows"]) == {"base", "lora", "masked_align", "full"}
    assert (
        set(saved["rows"]["lora"]["seeds"]) == {"0", "1", "2"}
        and "align" in saved["rows"]["lora"]["seeds"]["0"]["metrics"]
    )
    assert "align" in charts and charts["align"].is_file() and f"]({charts['align'].relative_to(tmp_path)})" in text
    assert set(pictures) == {"base", "lora", "masked_align", "full"}
    from PIL import Image

    with Image.open(pictures["lora"]) as im:
        assert im.width > 160 and im.height > 160


def history_keys(records) -> set[str]:
    return {i.key or "/".join(i.nested_key[:1]) for r in records if r.WhichOneof("record_type") == "history" for i in r.history.item}  # fmt: skip


def offline_run(folder: Path) -> Path:
    (run,) = Path(folder).glob("wandb/offline-run-*")
    return run


def test_wandb_runs_read_back_with_the_group_the_row_and_the_table(tmp_path, monkeypatch):
    import pm_lightning.training.wandb_logger as wl
    from pm_lightning.ablation.report import write_report
    from pm_lightning.ablation.results import collect
    from pm_lightning.ablation.wandb_runs import log_eval_run, log_summary_run
    from tests.helpers import wandb_records

    monkeypatch.setattr(wl, "has_wandb_credentials", lambda: False)
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    plan = three_seed_plan()
    jobs = write_fake_results(plan, tmp_path)
    results = collect(plan, tmp_path, jobs, {})
    _, _, charts, pictures = write_report(plan, tmp_path, results, "cmd")
    record = json.loads((tmp_path / "eval" / "lora" / "seed-1" / "metrics.json").read_text())
    log_eval_run(plan, tmp_path, tmp_path / "eval" / "lora" / "seed-1", "lora", 1, record, {"stage1": {"seed_everything": 1}})  # fmt: skip
    log_summary_run(plan, tmp_path, results, charts, pictures)
    assert offline_run(tmp_path).name.endswith("-summary")
    time.sleep(1.1)  # offline folders are named by the second: the rerun's has another name
    log_summary_run(plan, tmp_path, results, charts, pictures)  # a rerun of the ablation replaces its summary run
    assert len(list(tmp_path.glob("wandb/offline-run-*"))) == 1  # (offline_run below asserts it too)

    evals = wandb_records(offline_run(tmp_path / "eval" / "lora" / "seed-1"))
    (run,) = [r.run for r in evals if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.job_type) == ("tiny-ablation", "lora") and {"row:lora", "seed:1"} <= set(run.tags)
    prefix = (tmp_path / "wandb-id").read_text().strip()
    assert run.run_id == f"{prefix}-eval-lora-s1"  # stable: a rerun of the job replaces it, no duplicate row on W&B
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["row"] == "lora" and config["training"]["stage1"]["seed_everything"] == 1
    summary = {i.key: json.loads(i.value_json) for r in evals if r.WhichOneof("record_type") == "summary" for i in r.summary.update if i.key}  # fmt: skip
    assert summary["align/lego"] == record["metrics"]["align/lego"] and summary["unseen_align"] == 40.0

    folder = offline_run(tmp_path)
    records = wandb_records(folder)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.job_type) == ("tiny-ablation", "summary")
    assert {"ablation", "charts", "bars", "samples"} <= {k.split("/")[0] for k in history_keys(records)}
    (table,) = (folder / "files" / "media" / "table" / "ablation").glob("table_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"][:3] == ["row", "label", "seeds"]
    assert {row[0] for row in data["data"]} == {"base", "lora", "masked_align", "full"}
    align = data["columns"].index("align mean")
    assert {row[0]: row[align] for row in data["data"]}["lora"] == pytest.approx(50.0)
    assert len(list((folder / "files" / "media" / "images").rglob("*.png"))) >= len(charts) + len(pictures)


def test_write_docs_copies_the_report_with_its_figures(tmp_path):
    from pm_lightning.ablation.driver import copy_to_docs
    from pm_lightning.ablation.report import write_report
    from pm_lightning.ablation.results import collect

    plan, out, docs = three_seed_plan(), tmp_path / "out", tmp_path / "docs"
    jobs = write_fake_results(plan, out)
    write_report(plan, out, collect(plan, out, jobs, {}), "cmd")
    docs.mkdir()
    text = copy_to_docs(out, docs).read_text()
    links = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert links and all(link.startswith("ablation/") and (docs / link).is_file() for link in links)
