"""The prompts every row is evaluated on: never-trained sequences of the synthetic corpus (caption, step texts and
true frames, so the proxies aim at ground truth), or an explicit list at real scale. Sampler seed of prompt i under
ablation seed s: 1000 s + i, the same for every row."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pm_lightning.ablation.plan import EvalSpec
from pm_lightning.data.synthetic_corpus import DOMAINS, generate_sequence, sequence_seed


@dataclass
class Prompt:
    id: str  # "lego-00"
    domain: str
    caption: str
    steps: list[str] | None
    frames: int  # frames of the generated grid (the domain's count)
    truth: Path | None = None  # folder of true frames (written by `write_truth`)


def sampler_seed(seed: int, index: int) -> int:
    return 1000 * seed + index


def plan_prompts(spec: EvalSpec, truth_root: Path | None = None) -> list[Prompt]:
    """The plan's prompts in a fixed order; corpus prompts carry their true frames' folder under `truth_root`."""
    if spec.prompts is not None:
        return [
            Prompt(f"{p['domain']}-{i:02d}", p["domain"], p["caption"], p.get("steps"), DOMAINS.get(p["domain"], 9))
            for i, p in enumerate(spec.prompts)
        ]

    c = spec.corpus
    out = []
    for domain in c.domains or list(DOMAINS):
        for i in range(c.count(domain, spec.held_out)):
            seq = generate_sequence(domain, sequence_seed(c.split_seed, domain, i), c.size)
            pid = f"{domain}-{i:02d}"
            truth = Path(truth_root) / pid if truth_root is not None else None
            out.append(Prompt(pid, domain, seq.caption, list(seq.steps), len(seq.frames), truth))
    return out


def write_truth(spec: EvalSpec, prompts: list[Prompt]) -> None:
    """The true frames of the corpus prompts (00.png, ...), written once; the folder appears complete or not at all."""
    if spec.corpus is None:
        return

    c = spec.corpus
    for p in prompts:
        if p.truth is None or (p.truth / "done").is_file():
            continue
        index = int(p.id.rsplit("-", 1)[1])
        seq = generate_sequence(p.domain, sequence_seed(c.split_seed, p.domain, index), c.size)
        tmp = p.truth.with_name(f".{p.truth.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for k, frame in enumerate(seq.frames):
            frame.save(tmp / f"{k:02d}.png")
        (tmp / "done").write_text("")
        shutil.rmtree(p.truth, ignore_errors=True)
        try:
            os.replace(tmp, p.truth)
        except OSError:  # another job wrote it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
