"""The training CLI behind `python -m pm_lightning.fit`: LightningCLI over a stage module and ProcessDataModule.

Unknown or mistyped keys and values out of range (`core/validate.py` types in the stage modules', the data module's
and the trainer's signatures) fail at parse time with one line naming the key, exit code 2, before any model is
built or file written (`--print_config` too); everything a run writes lands under its run directory,
`trainer.default_root_dir` (`training/run_dir.py`), locked for the run (`training/run_lock.py`); a new run refuses a
directory holding another run's checkpoints before any work; `--ckpt_path PATH|last` resumes from a checkpoint
that loads.
"""

from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from pm_lightning.core.atomic import WriteFailed
from pm_lightning.core.config_files import resolved_config_args
from pm_lightning.core.errors import BadInput
from pm_lightning.core.validate import NonNegativeFloat, PositiveInt, StepLimit, refuse
from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.skip_counter import EmptyStream
from pm_lightning.data.stream import ResolutionError
from pm_lightning.models.vae_latents import MissingLatents, WrongLatentCache
from pm_lightning.models.variants import VARIANTS
from pm_lightning.models.weights import not_found_error, resolve_source
from pm_lightning.training.base import FlowMatchingModule
from pm_lightning.training.callbacks import SaveConfigWithCheckpoints
from pm_lightning.training.nonfinite import NonFiniteTraining, last_checkpoint
from pm_lightning.training.run_dir import (
    RunDirectoryInUse,
    UnreadableCheckpoint,
    check_run_directory,
    is_launch_process,
    resolve_ckpt_path,
)
from pm_lightning.training.run_lock import RunDirectoryLocked, RunLock
from pm_lightning.training.strategies import refuse_deepspeed, refuse_uneven_hsdp
from pm_lightning.training.wandb_logger import AutoWandbLogger


def require_local_base(base: str) -> str:
    """The base's local directory; a hub id must be downloaded first, not fetched by every rank mid-launch."""
    source = VARIANTS[base].location() if base in VARIANTS else base
    root = resolve_source(source)
    if not (Path(root) / "model_index.json").is_file():
        raise not_found_error(source, "not in the local Hugging Face cache (training never downloads on the fly)")
    return root


PROG = "python -m pm_lightning.fit"
DESCRIPTION = (
    "Train a stage (stage-1 masked / asymmetric / plain LoRA, stage 2, ReCraft) from an experiment config: "
    "`--config experiments/X.yaml [--config overlay.yaml] [--section.key value ...]`; `--ckpt_path last` resumes. "
    "The stage module builds its own optimizer and schedule (model.init_args.optimizer)."
)


NESTING = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Problem with given class_path", "Given value",
           "Expected a <class 'NoneType'>")  # fmt: skip


def one_line(message: str) -> str:
    """jsonargparse's nested error (a key inside a class inside a union ...) as `key.path: what is wrong`."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    if keys[:1] == ["model"] and "class_path" in message:
        keys.insert(1, "init_args")
    reasons = [line.strip().removeprefix("- ") for line in message.splitlines()]
    reasons = [r for r in reasons if r and not r.startswith(NESTING)]
    if not keys or not reasons:
        return " ".join(message.split())
    reason = re.sub(r"^Not of type \w+: ", "", reasons[0])
    return f"{'.'.join(keys)}: {reason}"


# LightningCLI's own optimizer / scheduler keys, switched off (`auto_configure_optimizers=False`): given on the command
# line (`unrecognized arguments: --optimizer ...`) or as a config's top-level key (`Option 'optimizer...'`)
LIGHTNING_OPTIMIZER_KEY = re.compile(r"(?:unrecognized arguments:.*?--|Option ')(optimizer|lr_scheduler)\b")
OWN_OPTIMIZER = (
    "is switched off: the stage module builds its own optimizer and learning-rate schedule. Set them under "
    "model.init_args.optimizer (name came|adamw, lr, betas, eps, weight_decay, schedule constant|warmup_constant|"
    "warmup_cosine, warmup_steps, total_steps), e.g. --model.init_args.optimizer.lr 5e-4; nothing was written"
)


class ConfigParser(LightningArgumentParser):
    """LightningCLI's parser with one-line refusals (exit code 2) instead of the usage text and nested reasons."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # a nested parser: the outer one reports
            return super().error(message, ex)
        if m := LIGHTNING_OPTIMIZER_KEY.search(message):
            refuse(PROG, f"--{m.group(1)} (LightningCLI's {m.group(1)} key) {OWN_OPTIMIZER}")
        refuse(PROG, f"{one_line(message)} (--help lists the keys; nothing was written)")


class CheckedTrainer(Trainer):
    """Lightning's Trainer with its step counts typed (`core/validate.py`): refused at parse time, not when built.

    Args:
        max_steps: optimizer steps to train, >= 1, or -1 (no limit: `max_epochs` decides).
        accumulate_grad_batches: micro-batches per optimizer step, >= 1.
        gradient_clip_val: clip the gradient norm at this value (>= 0); None = no clipping.
        log_every_n_steps: log every n steps (>= 1); None = Lightning's default (50).
        **kwargs: the other `lightning.pytorch.Trainer` arguments.
    """

    def __init__(
        self,
        *,
        max_steps: StepLimit = -1,
        accumulate_grad_batches: PositiveInt = 1,
        gradient_clip_val: NonNegativeFloat | None = None,
        log_every_n_steps: PositiveInt | None = None,
        **kwargs,
    ):
        super().__init__(
            max_steps=max_steps,
            accumulate_grad_batches=accumulate_grad_batches,
            gradient_clip_val=gradient_clip_val,
            log_every_n_steps=log_every_n_steps,
            **kwargs,
        )


class ProcessCLI(LightningCLI):
    """The CLI: the data module's domain list is the model's; run-level flags; one locked run directory; the
    checkpoint a resume uses (`resume_from`), checked to load."""

    lock: RunLock | None = None
    resume_from: str | None = None

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
        """Before any work: the base is here, the run directory is ours (locked), the resume checkpoint loads, an
        earlier run is not overwritten (or moved aside with --start_over). Everything refused leaves nothing behind."""
        require_local_base(self.config.model.init_args.base)
        self.check_strategy()
        root = self.config.trainer.default_root_dir or "."
        if is_launch_process():  # DDP children run inside the launcher's lock
            self.lock = RunLock.acquire(root)
            if notice := self.lock.stale_notice():
                print(notice, file=sys.stderr)
        try:
            self.resume_from, notices = resolve_ckpt_path(self.config.ckpt_path, root)
            moved = check_run_directory(root, self.resume_from is not None, self.config.start_over)
        except BaseException:
            self.release()
            raise
        for notice in notices if is_launch_process() else []:
            print(notice, file=sys.stderr)
        if moved is not None:
            print(f"the earlier run's outputs in {root} were moved to {moved}", file=sys.stderr)

    def check_strategy(self) -> None:
        """At load, before any process starts: no DeepSpeed, an HSDP shard group that divides the world size."""
        refuse_deepspeed(self.config.trainer.strategy)
        refuse_uneven_hsdp(self.config.trainer)

    def instantiate_classes(self) -> None:
        """Lightning's, then this CLI's after-work; a failure in either gives the run directory back."""
        try:
            super().instantiate_classes()
            self.describe_run()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give the run directory back (the lock file removed; the directory too when this run made it empty)."""
        if self.lock is not None:
            self.lock.release()

    def describe_run(self) -> None:
        """The W&B logger follows the run directory, with the run's tags; a resumed fit continues its W&B run."""
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
                if self.resume_from is not None and (run_id := logger.continue_run()):
                    print(f"W&B: the resumed fit continues run {run_id} of {run_dir}", file=sys.stderr)


def build_cli(args: list[str] | None = None, cli_class: type[ProcessCLI] = ProcessCLI) -> ProcessCLI:
    """Parse and instantiate (no training); `cli_class` a subclass that instantiates less (tests/test_meta_configs.py)."""
    return cli_class(
        FlowMatchingModule,
        ProcessDataModule,
        subclass_mode_model=True,
        trainer_class=CheckedTrainer,
        parser_class=ConfigParser,
        save_config_callback=SaveConfigWithCheckpoints,
        auto_configure_optimizers=False,  # the stage module builds its own (model.init_args.optimizer)
        run=False,
        args=args,
        parser_kwargs={"default_env": False, "prog": PROG, "description": DESCRIPTION},
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
    """Parse, lock and check the run directory, validate at step 0, fit, print where the outputs went."""
    try:
        cli = build_cli(args)  # a key out of range or unknown: one line, SystemExit 2 (`ConfigParser`)
    except (FileNotFoundError, RunDirectoryInUse, RunDirectoryLocked, UnreadableCheckpoint, ValueError) as err:
        # a missing base / stage-1 file / shard set; a used or live run dir; a damaged checkpoint; a bad value
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    ckpt = cli.resume_from
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
    except (MissingLatents, WrongLatentCache, ResolutionError) as err:  # the data does not fit the run's settings
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
        cli.release()
    return 0
