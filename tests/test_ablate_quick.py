"""`python -m pm_lightning.ablate --quick`: every row trained (real `fit` processes) and evaluated, scored by a judge
endpoint (a local chat-completions server), the report and the W&B runs written; a rerun
resumes (nothing runs twice); an ablation killed with its whole process group mid-job resumes to the same results."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import wandb_records
from tests.openai_stub import OpenAIStub, Reply

pytestmark = pytest.mark.slow

ROWS = ["base", "lora", "asymmetric", "masked", "masked_align", "full", "full_no_glob", "full_no_loc", "full_no_sem"]


def ablate_env(out: Path, judge_url: str | None = None) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "WANDB_API_KEY"):  # no upload; the judge only when given
        env.pop(var, None)
    if judge_url:
        env.update(OPENAI_BASE_URL=judge_url, OPENAI_API_KEY="sk-test-quick-ablation")
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR", "WANDB_CONFIG_DIR"):
        env[var] = str(out.parent / "wandb-home")
    return env


def ablate_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pm_lightning.ablate", "--quick", "--out", str(out), *extra]


def ablate(out: Path, *extra: str, judge_url: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run(ablate_command(out, *extra), cwd=REPO, env=ablate_env(out, judge_url),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)  # fmt: skip
    return proc, time.monotonic() - start


def run_records(folder: Path) -> list:
    (run,) = folder.glob("wandb/offline-run-*")
    return wandb_records(run)


def the_run(records):
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    return run


def judge_reply(body: dict) -> Reply:
    """Scores that depend on the grid the judge is shown (a digest of its image), so they differ between rows and
    samples and are the same for the same grid in any order of requests."""
    image = next(part["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
                 for part in m["content"] if part.get("type") == "image_url")  # fmt: skip
    h = int(hashlib.sha256(image.encode()).hexdigest(), 16)
    return Reply(content=json.dumps({"Accuracy": 1 + h % 5, "Coherence": 1 + h // 5 % 5, "Usability": 1 + h // 25 % 5}))


WALL_TIME = ("train_s", "eval_s", "adaptive_s")


def check_stage2_align(out: Path, results: dict) -> None:
    """The stage-2 rows are scored on their final sequences (docs/EVALUATION.md, "Final sequences"): a sample the
    adaptive steps left alone has its stage-1 grid's Align, which is masked_align's sample's (the same stage-1 LoRA
    and sampler seed); an edited one is scored on its final frames resampled into the stage-1 layout, so its Align
    differs from masked_align's exactly when that resampled grid differs from the stage-1 grid (one frame inserted
    into a 2 x 2 sequence at its middle is dropped by the resampling: cells 0 1 3 4 of 5)."""
    import numpy as np
    from PIL import Image

    from pm_lightning.eval.final_grid import align_grid

    def by_prompt(row: str) -> dict:
        record = json.loads((out / "eval" / row / "seed-0" / "metrics.json").read_text())
        return {Path(s["sample"]).name: s for s in record["samples"]}

    stage1 = by_prompt("masked_align")
    assert {s["scored_grid"] for s in stage1.values()} == {"stage1_grid"}
    for row in ROWS[5:]:
        samples = by_prompt(row)
        assert samples.keys() == stage1.keys()
        for name, s in samples.items():
            edited = bool(s["inserted"] or s["deleted"])
            assert s["scored_grid"] == ("final_sequence" if edited else "stage1_grid")
            folder = Path(s["sample"])
            grid = Image.open(folder / "grid.png").convert("RGB")
            settings = json.loads((folder / "report.json").read_text())["settings"]
            rows, cols = settings["rows"], settings["cols"]
            frames = [Image.open(p) for p in sorted((folder / "frames").glob("*.png"))]
            shown = align_grid(frames, rows, cols, (grid.width // cols, grid.height // rows))
            changed = not np.array_equal(np.asarray(shown), np.asarray(grid))
            assert changed <= edited  # no edit: the final frames are the stage-1 grid's
            same = s["align"] == pytest.approx(stage1[name]["align"], abs=1e-4)
            assert same != changed, (row, name, s["inserted"], s["deleted"], s["align"], stage1[name]["align"])
        mean_inserted = sum(s["inserted"] for s in samples.values()) / len(samples)
        assert results["rows"][row]["seeds"]["0"]["metrics"]["inserted"] == pytest.approx(mean_inserted)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One uninterrupted quick ablation with a judge endpoint: (output folder, process, seconds, judge requests)."""
    if not (REPO / "data" / "shards" / "train" / "index.json").is_file():
        pytest.skip("no synthetic shards (make shards)")
    out = tmp_path_factory.mktemp("ablation") / "quick"
    with OpenAIStub(answer=judge_reply) as judge:
        proc, seconds = ablate(out, judge_url=judge.base_url)
    return out, proc, seconds, judge.requests


def test_quick_ablation_end_to_end_and_resume(quick_run):
    out, proc, seconds, judged = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"ablate --quick took {seconds:.0f} s")  # its time is a figure (README), not a test: the load varies
    assert "(row, seed) pairs 9/9" in proc.stdout

    results = json.loads((out / "results.json").read_text())
    assert list(results["rows"]) == ROWS and results["missing"] == []
    for row in ROWS:
        metrics = results["rows"][row]["seeds"]["0"]["metrics"]
        assert 0 <= metrics["align"] <= 100 and 0 <= metrics["unseen_align"] <= 100
        assert {"align/lego", "align/origami", "gt_sim", "mono_px", "even_px", "coh_proxy"} <= set(metrics)
        assert 0 <= metrics["coh_proxy"] <= 1
        assert (out / "pictures" / f"{row}.png").is_file()
    full = results["rows"]["full"]["seeds"]["0"]["metrics"]
    assert {"truth_removal_found", "truth_duplicate_deleted", "inserted", "train_s"} <= set(full)
    assert results["rows"]["asymmetric"]["seeds"]["0"]["metrics"]["params_flux"] > 4e9  # MakeAnything's 4.19B

    check_stage2_align(out, results)
    text = (out / "RESULTS.md").read_text()
    assert "Quick run" in text and "## Which claims reproduce" in text and "![Align](charts/align.png)" in text
    assert "| Coh proxy |" in text.split("## ProcessMaker Table 3", 1)[1].split("\n## ", 1)[0]

    # the judge columns: the generated grids went to the endpoint (at most once each: a cache serves repeats), the
    # scores it gave are the columns (means over the row's samples), and the report shows them
    assert 0 < len(judged) <= 9 * len(ROWS) and all(r["path"] == "/v1/chat/completions" for r in judged)
    for row in ROWS:
        metrics = results["rows"][row]["seeds"]["0"]["metrics"]
        assert all(1 <= metrics[key] <= 5 for key in ("accuracy", "coherence", "usability", "unseen_accuracy"))
    assert len({results["rows"][r]["seeds"]["0"]["metrics"]["accuracy"] for r in ROWS}) > 1
    assert "Acc (judge)" in text and "Use (judge)" in text

    # each training is a real fit run: its resolved config and W&B run carry the ablation's grouping
    config = (out / "train" / "asymmetric" / "seed-0" / "config.yaml").read_text()
    assert "kind: asymmetric" in config and "seed_everything: 0" in config
    records = run_records(out / "train" / "asymmetric" / "seed-0")
    train = the_run(records)
    assert (train.run_group, train.job_type) == ("tiny-ablation", "train-stage1") and "row:asymmetric" in train.tags
    keys = {i.key for r in records if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert "resolved_config" in keys  # the whole config, not only the model's hyper-parameters
    for row in ("base", "full_no_sem"):
        run = the_run(run_records(out / "eval" / row / "seed-0"))
        assert (run.run_group, run.job_type) == ("tiny-ablation", row) and f"row:{row}" in run.tags
    summary = the_run(run_records(out))
    assert summary.job_type == "summary"
    (table,) = (next(out.glob("wandb/offline-run-*")) / "files" / "media" / "table" / "ablation").glob("table_*.json")
    assert {r[0] for r in json.loads(table.read_text())["data"]} == set(ROWS)

    markers = {p.name: p.stat().st_mtime_ns for p in (out / "jobs").iterdir()}
    again, _ = ablate(out)  # no judge now: every judged grid is in the judge cache
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished before") == len(markers)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "jobs").iterdir()} == markers
    assert len(list(out.glob("wandb/offline-run-*"))) == 1  # the rerun replaced the summary run, no duplicate


@pytest.mark.campaign  # 7 min of a second quick ablation: `make test-kill`, not the slow tier
def test_an_ablation_killed_mid_job_resumes_to_the_same_results(quick_run, tmp_path):
    """kill -9 of the whole process group (what a pre-empted job or a closed terminal does) while jobs run; the
    rerun skips what had finished, resumes or restarts the rest, and ends with the uninterrupted run's figures."""
    reference, first, _, _ = quick_run
    assert first.returncode == 0
    out = tmp_path / "quick"
    with OpenAIStub(answer=judge_reply) as judge:
        proc = subprocess.Popen(ablate_command(out), cwd=REPO, env=ablate_env(out, judge.base_url),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        deadline, running = time.monotonic() + 600, []
        while time.monotonic() < deadline and proc.poll() is None:  # until 3 jobs are done and another one runs
            done = {p.stem for p in (out / "jobs").glob("*.json")}
            running = [p.stem for p in (out / "logs").glob("*.log") if p.stem not in done]
            if len(done) >= 3 and running:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the quick ablation ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done = {p.stem for p in (out / "jobs").glob("*.json")}
        assert not (out / "results.json").exists() and running
        resumed, _ = ablate(out, judge_url=judge.base_url)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.stdout.count("finished before") == len(done)

    def figures(folder: Path) -> dict:
        rows = json.loads((folder / "results.json").read_text())["rows"]
        return {(row, seed, key): value for row, r in rows.items() for seed, s in r["seeds"].items()
                for key, value in s["metrics"].items() if key not in WALL_TIME}  # fmt: skip

    want, got = figures(reference), figures(out)
    assert got.keys() == want.keys()
    assert got == {k: pytest.approx(v, rel=1e-5, abs=1e-6) for k, v in want.items()}
