"""Host memory per rank: stage-1 and stage-2 `fit` on 2 CPU gloo processes over a Flux-shaped base of >= 1 GB.

Builds a pipeline directory in a temporary folder (the tiny Flux's VAE, text encoders, tokenizers and scheduler; a
wider transformer: Flux's head size 128 and rope axes (16, 56, 56), `--heads` heads, the tiny model's 2 double + 4
single blocks, random weights, one fp32 safetensors file), then runs the documented commands with it as the base:

    python -m pm_lightning.fit --config experiments/tiny.yaml --config experiments/overlays/no_samples.yaml
        --config experiments/strategies/<strategy>.yaml --trainer.accelerator cpu --trainer.devices 2 ...
    python -m pm_lightning.fit --config experiments/tiny_stage2.yaml ... --model.init_args.stage1 <stage 1's unseen>

and samples /proc/<pid>/smaps_rollup of every rank every 0.2 s. Per rank it reports the peak of each field over the
run: Anonymous (the process's own copies), file-backed pages shared with another process (Shared_Clean + Shared_Dirty:
the safetensors mmap both ranks read), file-backed private pages (Private_Clean + Private_Dirty - Anonymous) and Rss.
`--write-docs` puts the table into docs/SCALING.md ("## Host memory per rank"). Not a test: a measurement.

    .venv/bin/python bench/host_memory.py --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _paths import REPO  # bench/ is on sys.path when run as a script
from docs_section import write_section

FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty", "Anonymous")
GB = 1e9
HEADER = """## Host memory per rank

Measured by `bench/host_memory.py` (its docstring: the base, the two `fit` lines): 2 CPU gloo processes, a Flux-shaped
base of 1.30 GB (one fp32 safetensors file), 2 steps of batch 1 of stage 1 (`tiny.yaml`) and then of stage 2
(`tiny_stage2.yaml` on stage 1's exported `unseen` LoRA). "Before" ran the same script with `--repo` on an export of
main at 8145f56 (`git archive 8145f56`); "After" this checkout:

```bash
.venv/bin/python bench/host_memory.py --keep /tmp/hm --repo /tmp/hm_before --json /tmp/hm/before_ddp.json --label ...
.venv/bin/python bench/host_memory.py --keep /tmp/hm --json /tmp/hm/after_ddp.json --label ...
.venv/bin/python bench/host_memory.py --keep /tmp/hm --strategy fsdp --json /tmp/hm/after_fsdp.json --label ...
.venv/bin/python bench/host_memory.py --steps 0 --write-docs --tables /tmp/hm/before_ddp.json /tmp/hm/after_ddp.json /tmp/hm/after_fsdp.json
```

Anonymous: the process's own memory (a copy of the base shows here). File-backed private: file pages only this
process mapped at that moment (rank 0 reads the base before rank 1 has started): page cache, not a copy. Base file, shared: pages of the base's
safetensors file mapped by both ranks (one copy in the page cache). Base file, copied: pages of that mapping the
process wrote (copy-on-write: its private copy). Each column is its own peak over the run, sampled every 0.3 s; the
machine's other jobs do not change these figures (they are not times)."""


def build_base(root: Path, heads: int) -> Path:
    """A Flux pipeline directory: the tiny Flux's parts, a transformer `heads` x 128 wide (random, fp32, one file)."""
    import torch
    from diffusers import FluxTransformer2DModel

    from pm_lightning.core.paths import tiny_flux_dir
    from pm_lightning.models.variants import TINY_FLUX_TRANSFORMER

    tiny = tiny_flux_dir()
    for item in tiny.iterdir():
        if item.name != "transformer":
            (root / item.name).symlink_to(item)
    config = dict(TINY_FLUX_TRANSFORMER, attention_head_dim=128, num_attention_heads=heads, axes_dims_rope=(16, 56, 56))
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)  # small random weights: a finite loss through every block
    model.save_pretrained(root / "transformer", max_shard_size="100GB")
    return root


def rollup(pid: int) -> dict[str, int] | None:
    """smaps_rollup of `pid` in bytes (None once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines()[1:]:
        key, value = line.split(":", 1)
        if key in FIELDS:
            out[key] = int(value.split()[0]) * 1024
    return out


def file_mapping(pid: int, path: str) -> dict[str, int]:
    """The smaps fields of `pid`'s mappings of the file `path` (the base's safetensors), summed, in bytes."""
    out, inside = dict.fromkeys(FIELDS, 0), False
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:  # a mapping's header line
            inside = len(head) >= 6 and head[5] == path
        elif inside and head and head[0].rstrip(":") in FIELDS:
            out[head[0].rstrip(":")] += int(head[1]) * 1024
    return out


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (the ranks Lightning's launcher starts)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo += sorted(children.get(p, []))
    return out


def run_sampled(cmd: list[str], log: Path, repo: Path, base_file: str) -> list[dict[str, int]]:
    """Run `cmd` in `repo`; per python process of its tree (rank 0 first), the peak of every smaps field over the run,
    of the whole process and (keys "file:<field>") of its mapping of `base_file`."""
    env = dict(
        os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(repo), PM_LIGHTNING_HOME=str(repo)
    )
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=f, stderr=subprocess.STDOUT)
        peaks: dict[int, dict[str, int]] = {}
        while proc.poll() is None:
            for pid in descendants(proc.pid):
                try:
                    if "python" not in Path(f"/proc/{pid}/comm").read_text():
                        continue
                except OSError:
                    continue
                sample = rollup(pid)
                if sample:
                    sample.update({f"file:{k}": v for k, v in file_mapping(pid, base_file).items()})
                    peak = peaks.setdefault(pid, {})
                    for key, value in sample.items():
                        peak[key] = max(peak.get(key, 0), value)
            time.sleep(0.3)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}; see {log}")
    return [peaks[p] for p in sorted(peaks)]


def fit_commands(base: Path, out: Path, strategy: str, steps: int) -> dict[str, list[str]]:
    """The two documented `fit` lines on `base`, cut to `steps` steps of batch 1, no validation, no logger."""
    common = [
        f"--config=experiments/strategies/{strategy}.yaml",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        "--data.batch_size=1",
        f"--model.init_args.base={base}",
    ]
    fit = [sys.executable, "-m", "pm_lightning.fit"]
    stage1 = [*fit, "--config=experiments/tiny.yaml", "--config=experiments/overlays/no_samples.yaml", *common]
    stage2 = [*fit, "--config=experiments/tiny_stage2.yaml", "--config=experiments/overlays/no_samples.yaml", *common]
    lora = out / "stage1" / "lora" / "final" / "unseen.safetensors"
    return {
        "stage 1": [*stage1, f"--trainer.default_root_dir={out / 'stage1'}"],
        "stage 2": [*stage2, f"--trainer.default_root_dir={out / 'stage2'}", f"--model.init_args.stage1={lora}"],
    }


def table(results: dict, file_bytes: int, label: str) -> str:
    rows = [
        f"**{label}**; base transformer file {file_bytes / GB:.2f} GB (fp32). Peak per rank over the run, GB:",
        "",
        "| run | rank | Anonymous | file-backed shared | file-backed private | Rss | base file: shared | base file: copied |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run, ranks in results.items():
        for rank, p in enumerate(ranks):
            shared = p["Shared_Clean"] + p["Shared_Dirty"]
            private = max(0, p["Private_Clean"] + p["Private_Dirty"] - p["Anonymous"])
            rows.append(
                f"| {run} | {rank} | {p['Anonymous'] / GB:.2f} | {shared / GB:.2f} | {private / GB:.2f} | {p['Rss'] / GB:.2f} "
                f"| {p['file:Shared_Clean'] / GB:.2f} | {p['file:Private_Dirty'] / GB:.2f} |"
            )
    return "\n".join(rows)


def write_docs(tables: list[str], *extra: str) -> None:
    """docs/SCALING.md's "## Host memory per rank": the header, the tables of the saved `--json` files, then `extra`."""
    saved = [json.loads(Path(t).read_text()) for t in tables]
    texts = [table(r["results"], r["file_bytes"], r["label"]) for r in saved]
    write_section("\n\n".join([HEADER, *texts, *extra]) + "\n", REPO / "docs" / "SCALING.md")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=12, help="attention heads of 128 (12: 1.25 GB fp32)")
    parser.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    parser.add_argument("--steps", type=int, default=2, help="steps per run; 0 with --write-docs: only write --tables")
    parser.add_argument("--label", default="", help="what this run measures (the table's first words)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", type=Path, help="build the base and runs here (kept) instead of a temporary folder")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the checkout whose pm_lightning runs (an older one: 'before')"
    )
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/SCALING.md")
    parser.add_argument("--tables", nargs="*", default=[], help="--json files of earlier runs, written first")
    args = parser.parse_args(argv)
    if args.write_docs and args.steps == 0:  # --steps 0: only write the saved tables
        write_docs(args.tables)
        return {}
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="host_memory_"))
    try:
        base = tmp / "base"
        if not (base / "transformer").is_dir():
            base.mkdir(parents=True, exist_ok=True)
            build_base(base, args.heads)
        (base_file,) = (base / "transformer").glob("*.safetensors")
        file_bytes = base_file.stat().st_size
        results = {}
        shutil.rmtree(tmp / args.strategy, ignore_errors=True)  # fresh run directories (fit refuses a used one)
        for run, cmd in fit_commands(base, tmp / args.strategy, args.strategy, args.steps).items():
            results[run] = run_sampled(
                cmd, tmp / f"{args.strategy}-{run.replace(' ', '')}.log", args.repo, str(base_file.resolve())
            )
            print(run, json.dumps(results[run]), flush=True)
        label = args.label or f"{args.strategy}, 2 CPU gloo processes, {args.steps} steps"
        text = table(results, file_bytes, label)
        print(text)
        if args.json:
            args.json.write_text(json.dumps({"file_bytes": file_bytes, "label": label, "results": results}, indent=1))
        if args.write_docs:
            write_docs(args.tables, text)
        return results
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
