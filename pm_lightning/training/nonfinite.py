"""Non-finite losses and gradients: the step is skipped (no optimizer update), counted, and after `limit`
consecutive bad steps the run stops with a message naming the step, the loss terms and the last good checkpoint."""

from __future__ import annotations

import logging

import torch

from pm_lightning.training.strategies import full_norm

log = logging.getLogger(__name__)


class NonFiniteTraining(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class NonFiniteGuard:
    """Decides, on every rank alike, whether this step's loss and gradients are finite; counts the skipped ones."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"model.init_args.max_nonfinite_steps must be >= 1, got {limit}")
        self.limit, self.consecutive, self.skipped = limit, 0, 0
        self.grad_norm: torch.Tensor | None = None  # this rank's trainable-gradient norm of the step just checked

    def finite(self, loss: torch.Tensor | None, params: list[torch.nn.Parameter]) -> bool:
        """This rank's verdict: the loss and every gradient are finite (one fused norm, kept in `grad_norm`)."""
        grads = [p.grad for p in params if p.grad is not None]
        # FSDP2 gradients are DTensor shards: their norm is reduced to the global norm (a collective on every rank)
        self.grad_norm = full_norm(torch.nn.utils.get_total_norm(grads)) if grads else None
        values = [loss.detach().float().reshape(1)] if loss is not None else []
        if self.grad_norm is not None:
            values.append(self.grad_norm.float().reshape(1))
        return bool(torch.isfinite(torch.cat(values)).all()) if values else True

    def check(self, module, loss: torch.Tensor | None) -> bool:
        """True to take the optimizer step; False (counted) to skip it. Raises NonFiniteTraining at the limit."""
        bad = torch.tensor(0.0 if self.finite(loss, module.trainable_parameters()) else 1.0, device=module.device)
        trainer = module._trainer
        if trainer is not None and trainer.world_size > 1:  # a bad shard / rank makes every rank skip
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        if float(bad) == 0:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        step = module.global_step
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in getattr(module, "last_terms", {}).items()) or "not recorded"
        log.warning(
            "step %d: non-finite loss or gradient (%s): step skipped (%d in a row)", step, terms, self.consecutive
        )
        if self.consecutive >= self.limit:
            raise NonFiniteTraining(
                f"{self.consecutive} consecutive steps with a non-finite loss or gradient, the last at optimizer step "
                f"{step} (loss terms: {terms}); the weights were not updated by any of them. Last good checkpoint: "
                f"{last_checkpoint(trainer)}. Resume from it with --ckpt_path last after fixing the cause (learning "
                "rate, data, precision), or raise model.init_args.max_nonfinite_steps."
            )
        return False


def last_checkpoint(trainer) -> str:
    """The newest checkpoint the run wrote (or says there is none)."""
    callback = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return path or "none written yet"


def terms_of(values: dict[str, torch.Tensor | float]) -> dict[str, torch.Tensor | float]:
    """Loss terms kept for the message: detached means, read (a host sync) only when a message is written."""
    return {k: v.detach().float().mean() if isinstance(v, torch.Tensor) else v for k, v in values.items()}
