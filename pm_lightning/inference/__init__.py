"""Inference: stage-1 grids, reference-conditioned sampling, adaptive steps, the inference session and its outputs."""
