"""Train a stage: `python -m pm_lightning.fit --config experiments/X.yaml [--config more.yaml] [--section.key value ...]`.

    python -m pm_lightning.fit --config experiments/tiny.yaml                      # make train-stage1
    python -m pm_lightning.fit --config experiments/tiny.yaml --ckpt_path last     # resume exactly
    python -m pm_lightning.fit --config experiments/tiny.yaml --print_config       # the resolved config
    python -m pm_lightning.fit --config experiments/tiny.yaml --trainer.default_root_dir runs/try --trainer.max_steps 3

The CLI: `pm_lightning/training/cli.py`; the run directory: `pm_lightning/training/run_dir.py`.
"""

from __future__ import annotations

import sys

from pm_lightning.core.quiet import quiet_known_notices


def main(args: list[str] | None = None) -> int:
    """`training/cli.py`'s main, imported after the known third-party notices are filtered (its import brings
    Lightning, diffusers and torchao: about 6 s, so `fit --help` cannot answer in under a second)."""
    quiet_known_notices()
    from pm_lightning.training.cli import main as fit_main  # after the filters: torchao logs at import

    return fit_main(args)


if __name__ == "__main__":
    sys.exit(main())
