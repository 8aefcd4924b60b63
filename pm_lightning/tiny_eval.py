"""Build the embedded tiny evaluators (open_clip CLIP + patch tokens): `python -m pm_lightning.tiny_eval --out data/tiny-eval`.

The recipe: `pm_lightning/tiny/evaluators.py`; the result is documented in docs/EVALUATION.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pm_lightning.core import validate as v


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = v.Parser(prog="python -m pm_lightning.tiny_eval", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=v.output_dir, default=Path("data/tiny-eval"), help="the evaluators folder written")
    p.add_argument("--seed", type=v.SEED, default=0, help="initialisation and data seed")
    p.add_argument("--steps", type=v.POSITIVE_INT, default=None, help="training steps (default TinyEvalConfig's)")
    p.add_argument(
        "--train-per-domain", type=v.POSITIVE_INT, default=None, help="sequences per domain (default TinyEvalConfig's)"
    )
    p.add_argument("--threads", type=v.WORKERS, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    from pm_lightning.tiny.evaluators import TinyEvalConfig, build

    given = {k: getattr(args, k) for k in ("steps", "train_per_domain") if getattr(args, k) is not None}
    cfg = TinyEvalConfig(seed=args.seed, **given)
    command = "python -m pm_lightning.tiny.evaluators " + " ".join(argv if argv is not None else sys.argv[1:])
    log = build(args.out, cfg, args.threads, command.strip())
    print(json.dumps(log["metrics"], indent=1))


if __name__ == "__main__":
    main()
