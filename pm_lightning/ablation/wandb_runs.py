"""The ablation on W&B: one project, the ablation name as the group, the row as the job type (and a `row:` tag).

Training runs are `fit`'s own (AutoWandbLogger; the job builds their group, job type and tags). Here: the evaluation
run of each (row, seed), whose summary holds every metric (per domain too) so that the runs table compares rows
directly, and the summary run: the whole table (`wandb.Table`), one bar chart per metric with error bars, and the
sample grids of every row (`wandb.Image`). Offline without credentials (`wandb sync OUT/**/wandb/offline-run-*`).
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import asdict
from pathlib import Path

from pm_lightning.ablation.columns import column
from pm_lightning.ablation.plan import Plan
from pm_lightning.core.run_layout import RunDir
from pm_lightning.training import wandb_logger

ID_FILE = "wandb-id"  # OUT/wandb-id: the folder's W&B id prefix, made once (a --start-over folder gets a new one)


def run_id(out: Path, job: str) -> str:
    """The W&B id of one of the folder's runs (`eval-<row>-s<seed>`, `summary`): the same on every rerun, so a rerun
    replaces the run (online: `resume="allow"`; offline: the newest folder of an id is the one kept) instead of
    adding a duplicate to the project's runs table."""
    path = Path(out) / ID_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(4) + "\n")
    return f"{path.read_text().strip()}-{job}"


def start_run(plan: Plan, folder: Path, job_type: str, name: str, tags: list[str], config: dict, id: str):
    """A W&B run in `folder/wandb` (offline unless wandb finds credentials, as for training runs). Offline, earlier
    folders of the same run id (an earlier run of this job, superseded) are removed: `wandb sync` of two folders with
    one id keeps only one of them anyway (wandb/wandb#3841)."""
    # lazy: wandb, imported where used (docs STYLE 8), 0.7 s (docs/ARCHITECTURE.md, "Start-up")
    import wandb

    folder.mkdir(parents=True, exist_ok=True)
    mode = "online" if wandb_logger.has_wandb_credentials() else "offline"
    if mode == "offline":
        for old in RunDir(folder).wandb.glob(f"offline-run-*-{id}"):
            shutil.rmtree(old, ignore_errors=True)
    return wandb.init(project=plan.project, group=plan.name, job_type=job_type, name=name, id=id, resume="allow",
                      tags=sorted(set(tags)), config=config, dir=str(folder), mode=mode)  # fmt: skip


def log_eval_run(plan: Plan, out: Path, folder: Path, row: str, seed: int, record: dict,
                 train_configs: dict[str, dict]) -> str:  # fmt: skip
    """The evaluation run of one (row, seed); returns its local folder."""
    # lazy: wandb, imported where used (docs STYLE 8), 0.7 s (docs/ARCHITECTURE.md, "Start-up")
    import wandb

    config = {"ablation": plan.name, "row": row, "seed": seed, "row_spec": asdict(plan.rows[row]),
              "eval": asdict(plan.eval), "training": train_configs, "adaptive_config": record.get("adaptive_config")}  # fmt: skip
    run = start_run(plan, folder, row, f"{row}-seed{seed}-eval", [f"ablation:{plan.name}", f"row:{row}",
                    f"seed:{seed}", "eval"], config, run_id(out, f"eval-{row}-s{seed}"))  # fmt: skip
    try:
        keys = ["sample", "domain", "prompt", "align", "monotonicity_pixel", "evenness_pixel", "gt_similarity"]
        table = wandb.Table(columns=["grid", *keys])
        for s in record["samples"]:
            table.add_data(wandb.Image(str(Path(s["sample"]) / "grid.png"), caption=s["prompt"]),
                           *[s.get(k) for k in keys])  # fmt: skip
        run.log({"samples": table})
        run.summary.update(record["metrics"])
        where = run.dir.rsplit("/files", 1)[0]
    finally:
        run.finish()
    return where


def log_summary_run(plan: Plan, out: Path, results: dict, charts: dict[str, Path], pictures: dict[str, Path]) -> str:
    """The summary run: the table, the per-seed table, bar charts with error bars, a picture per row."""
    # lazy: wandb, imported where used (docs STYLE 8), 0.7 s (docs/ARCHITECTURE.md, "Start-up")
    import wandb

    run = start_run(plan, Path(out), "summary", f"{plan.name}-summary", [f"ablation:{plan.name}", "summary"],
                    {"plan": results["plan"], "seeds": results["seeds"], "quick": results["quick"]},
                    run_id(out, "summary"))  # fmt: skip
    try:
        metrics = sorted({k for r in results["rows"].values() for k in r["summary"]})
        cols = ["row", "label", "seeds"] + [f"{m} {part}" for m in metrics for part in ("mean", "sd")]
        table = wandb.Table(columns=cols)
        per_seed = wandb.Table(columns=["row", "seed", *metrics])
        for name, r in results["rows"].items():
            cells = [
                v for m in metrics for v in (r["summary"].get(m, {}).get("mean"), r["summary"].get(m, {}).get("sd"))
            ]
            table.add_data(name, r["label"], len(r["seeds"]), *cells)
            for seed, s in r["seeds"].items():
                per_seed.add_data(name, int(seed), *[s["metrics"].get(m) for m in metrics])
        keys = ["name", "metric", "paper", "mean", "low", "high", "n", "p", "family", "holm_m", "p_holm", "verdict",
                "beyond_spread"]  # fmt: skip
        contrasts = wandb.Table(columns=["contrast", *keys[1:]])
        for c in results["contrasts"]:
            contrasts.add_data(*[c[k] for k in keys])
        logged = {"ablation/table": table, "ablation/per_seed": per_seed, "ablation/contrasts": contrasts}
        for metric, path in charts.items():
            logged[f"charts/{metric}"] = wandb.Image(
                str(path), caption=f"{column(metric).header}: mean ± sd over seeds"
            )
            bars = wandb.Table(columns=["row", metric], data=[[r["label"], r["summary"][metric]["mean"]]
                               for r in results["rows"].values() if r["summary"].get(metric, {}).get("mean") is not None])  # fmt: skip
            logged[f"bars/{metric}"] = wandb.plot.bar(bars, "row", metric, title=column(metric).header)
        for row, path in pictures.items():
            logged[f"samples/{row}"] = wandb.Image(str(path), caption=results["rows"][row]["label"])
        run.log(logged)
        where = run.dir.rsplit("/files", 1)[0]
    finally:
        run.finish()
    return where
