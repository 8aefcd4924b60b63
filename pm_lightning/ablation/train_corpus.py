"""The plan's own training corpus (`train_corpus`: a count per training domain, e.g. long-tailed like MakeAnything's
50 to 10,000 sequences per task): synthetic sequences written and sharded once into OUT/corpus/train, which every
training of the plan reads (`jobs.fit_command` passes it as `data.train_shards`). The folder appears complete or not
at all, so an interrupted build is redone and a finished one reused."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pm_lightning.ablation.jobs import train_corpus_dir
from pm_lightning.ablation.plan import Plan
from pm_lightning.data.importers import discover_folder
from pm_lightning.data.shard_writer import ShardConfig, ShardError, write_shards
from pm_lightning.data.synthetic_corpus import write_corpus


class CorpusBuildFailed(RuntimeError):
    """Sharding the plan's corpus wrote nothing (the message ends with the shard writer's error)."""


def ensure_train_corpus(plan: Plan, out: Path, print_fn=print) -> Path | None:
    """OUT/corpus/train for a plan with a `train_corpus` (built when missing), else None."""
    spec = plan.train_corpus
    if spec is None:
        return None
    target = train_corpus_dir(out)
    if (target / "index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".raw-") as raw:
        write_corpus(Path(raw), spec.sizes, spec.size, spec.seed, progress=False, varied=spec.varied_steps)
        try:  # what `python -m pm_lightning.shards --src RAW --size SIZE` does, without the command
            write_shards(discover_folder(raw), tmp, ShardConfig(size=spec.size))
        except (ShardError, ValueError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CorpusBuildFailed(f"could not shard the plan's train_corpus into {target}: {err}") from err
    shutil.rmtree(target, ignore_errors=True)  # an incomplete earlier build (no index.json)
    os.replace(tmp, target)
    kind = " (varied step counts)" if spec.varied_steps else ""
    print_fn(f"train corpus: {sum(spec.sizes.values())} sequences of {len(spec.sizes)} domains{kind} -> {target}")
    return target
