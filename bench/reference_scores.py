"""Reference values of the evaluation table: `python -m pm_lightning.evaluate` on true synthetic sequences.

8 sequences per domain (every domain, split seed 1: never trained on), written as samples (grid.png, frames/,
report.json without `ground_truth`, so the proxies aim at each sequence's own last frame) and scored with the
tiny evaluators. Prints the markdown table of docs/EVALUATION.md's "Reference values" subsection.

    python bench/reference_scores.py [--per-domain 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def write_truth_samples(root: Path, per_domain: int) -> None:
    from pm_lightning.data.grid import frames_to_grid, layout_for
    from pm_lightning.data.synthetic_corpus import DOMAINS, generate_sequence, sequence_seed

    for domain in DOMAINS:
        for i in range(per_domain):
            seq = generate_sequence(domain, sequence_seed(1, domain, i))
            folder = root / domain / f"{i:02d}"
            (folder / "frames").mkdir(parents=True)
            for k, frame in enumerate(seq.frames):
                frame.save(folder / "frames" / f"{k:02d}.png")
            frames_to_grid(seq.frames, *layout_for(len(seq.frames))).save(folder / "grid.png")
            report = {"prompt": seq.caption, "domain": domain, "steps": seq.steps}
            (folder / "report.json").write_text(json.dumps(report))


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-domain", type=int, default=8)
    args = p.parse_args(argv)
    import torch

    from pm_lightning import evaluate

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        write_truth_samples(Path(tmp), args.per_domain)
        results = evaluate.main(["--samples", tmp, "--out", str(Path(tmp) / "results.json")])
    return results["markdown"]


if __name__ == "__main__":
    main()
