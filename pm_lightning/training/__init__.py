"""Training: flow-matching maths, the shared stage base, stage 1, stage 2 / ReCraft, optimizers, strategies, callbacks, the W&B logger."""
