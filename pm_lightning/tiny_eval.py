"""Build the embedded tiny evaluators (open_clip CLIP + patch tokens): `python -m pm_lightning.tiny_eval --out data/tiny-eval`.

The recipe: `pm_lightning/tiny/evaluators.py`; the result is documented in docs/EVALUATION.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pm_lightning.tiny.evaluators import TinyEvalConfig, build


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/tiny-eval"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=TinyEvalConfig.steps)
    p.add_argument("--train-per-domain", type=int, default=TinyEvalConfig.train_per_domain)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    cfg = TinyEvalConfig(seed=args.seed, steps=args.steps, train_per_domain=args.train_per_domain)
    command = "python -m pm_lightning.tiny.evaluators " + " ".join(argv if argv is not None else sys.argv[1:])
    log = build(args.out, cfg, args.threads, command.strip())
    print(json.dumps(log["metrics"], indent=1))


if __name__ == "__main__":
    main()
