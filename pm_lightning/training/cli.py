"""The training CLI behind `python -m pm_lightning.fit`: LightningCLI over a stage module and ProcessDataModule.

Unknown or mistyped keys fail at parse time, before any model is built; `--print_config` prints the resolved
config; everything a run writes lands under its run directory, `trainer.default_root_dir`
(`training/run_dir.py`); a new run refuses a directory holding another run's checkpoints before any work;
`--ckpt_path PATH|last` resumes.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from pm_lightning.core.atomic import WriteFailed
from pm_lightning.core.config_files import resolved_config_args
from pm_lightning.core.errors import BadInput
from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.stream import EmptyStream
from pm_lightning.models.vae_latents import MissingLatents, WrongLatentCache
from pm_lightning.models.variants import VARIANTS
from pm_lightning.models.weights import not_found_error, resolve_source
from pm_lightning.training.base import FlowMatchingModule
from pm_lightning.training.callbacks import SaveConfigWithCheckpoints
from pm_lightning.training.nonfinite import NonFiniteTraining, last_checkpoint
from pm_lightning.training.run_dir import RunDirectoryInUse, check_run_directory, resolve_ckpt_path
from pm_lightning.training.wandb_logger import AutoWandbLogger


def require_local_base(base: str) -> str:
    """The base's local directory; a hub id must be downloaded first, not fetched by every rank mid-launch."""
    source = VARIANTS[base].location() if base in VARIANTS else base
    root = resolve_source(source)
    if not (Path(root) / "model_index.json").is_file():
        raise not_found_error(source, "not in the local Hugging Face cache (training never downloads on the fly)")
    return root


class ProcessCLI(LightningCLI):
    """The CLI: the data module's domain list is the model's; run-level flags; one run directory."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--experiment", type=str, default="default", help="experiment name (W&B group)")
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="resume from a checkpoint path or 'last'"
        )
        parser.add_argument("--validate_first", type=bool, default=True, help="validation pass at step 0")
        parser.add_argument(
            "--start_over",
            type=bool,
            default=False,
            help="start a new run in a run directory that holds an earlier run (moved to <dir>.prev-<time>)",
        )
        parser.link_arguments("data.domains", "model.init_args.domains")

    def parse_arguments(self, parser, args) -> None:
        """LightningCLI's parse, with each `--config` that `extends:` another read resolved (`core/config_files.py`)."""
        if isinstance(args, dict):
            return super().parse_arguments(parser, args)
        self.config = parser.parse_args(resolved_config_args(sys.argv[1:] if args is None else list(args)))

    def before_instantiate_classes(self) -> None:
        require_local_base(self.config.model.init_args.base)
        root = self.config.trainer.default_root_dir or "."
        moved = check_run_directory(root, self.config.ckpt_path is not None, self.config.start_over)
        if moved is not None:
            print(f"the earlier run in {root} was moved to {moved}", file=sys.stderr)

    def after_instantiate_classes(self) -> None:
        model, run_dir = self.model, str(self.trainer.default_root_dir)
        tags = [f"stage{model.hparams.get('stage', '?')}"]
        if "adapter" in model.hparams:
            tags.append(f"adapter:{model.hparams['adapter']['kind']}")
        if "alignment" in model.hparams:
            tags.append("align:on" if model.hparams["alignment"]["enabled"] else "align:off")
        for logger in self.trainer.loggers:
            if hasattr(logger, "use_run_dir"):  # W&B, TensorBoard: their files go in the run directory
                logger.use_run_dir(run_dir)
            if isinstance(logger, AutoWandbLogger):
                logger.describe_run(self.config.experiment, tags)
                if self.config.ckpt_path is not None and (run_id := logger.continue_run()):
                    print(f"W&B: the resumed fit continues run {run_id} of {run_dir}", file=sys.stderr)


def build_cli(args: list[str] | None = None) -> ProcessCLI:
    """Parse and instantiate (no training)."""
    return ProcessCLI(
        FlowMatchingModule,
        ProcessDataModule,
        subclass_mode_model=True,
        save_config_callback=SaveConfigWithCheckpoints,
        run=False,
        args=args,
        parser_kwargs={"default_env": False},
    )


def report(cli: ProcessCLI) -> None:
    """Print where the run's outputs are (rank zero: one report per run, not one per process)."""
    trainer = cli.trainer
    if not trainer.is_global_zero:
        return
    lines = [f"run directory:  {Path(trainer.default_root_dir).resolve()}"]
    for cb in trainer.callbacks:
        for attr, label in (
            ("last_dir", "LoRA files:    "),
            ("last_path", "sample grids:  "),
            ("best_model_path", "checkpoints:   "),
        ):
            value = getattr(cb, attr, None)
            if value:
                lines.append(f"{label} {Path(value).resolve().parent if attr != 'last_dir' else Path(value).resolve()}")
    for logger in trainer.loggers:
        if isinstance(logger, AutoWandbLogger):
            lines.append(f"W&B run:        {logger.run_location()}")
        elif isinstance(logger, TensorBoardLogger):
            lines.append(f"TensorBoard:    {Path(logger.log_dir).resolve()} (tensorboard --logdir {logger.root_dir})")
    print("\n".join(lines))


def main(args: list[str] | None = None) -> int:
    """Parse, check the run directory, validate at step 0, fit, print where the outputs went."""
    try:
        cli = build_cli(args)
        ckpt = resolve_ckpt_path(cli.config.ckpt_path, cli.trainer.default_root_dir)
    except (
        FileNotFoundError,
        RunDirectoryInUse,
    ) as err:  # a missing base / stage-1 file / shard set / last.ckpt; a used run dir
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # the step-0 validation reads data too: its faults end the same way as training's
        if cli.config.validate_first and ckpt is None and cli.datamodule.hparams.val_shards:
            cli.trainer.validate(cli.model, datamodule=cli.datamodule)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
        report(cli)
    except NonFiniteTraining as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except pickle.UnpicklingError as err:  # Lightning reads checkpoints with weights_only=True (torch >= 2.6)
        print(f"error: {ckpt} holds objects other than tensors and plain data: refused unread ({err})", file=sys.stderr)
        return 2
    except BadInput as err:  # e.g. a checkpoint of another stage or adapter
        print(f"error: --ckpt_path {ckpt}: {err}", file=sys.stderr)
        return 2
    except (MissingLatents, WrongLatentCache) as err:  # latent_cache_dir: a grid missing, or another VAE's cache
        print(f"error: {err}", file=sys.stderr)
        return 2
    except EmptyStream as err:
        print(f"error: {err}", file=sys.stderr)
        return 5
    except WriteFailed as err:  # a checkpoint could not be written: stopping beats training without one
        print(f"error: {err}. Resume from {last_checkpoint(cli.trainer)} with --ckpt_path last.", file=sys.stderr)
        return 4
    finally:
        for logger in cli.trainer.loggers:
            if isinstance(logger, AutoWandbLogger):
                logger.close()
    return 0
