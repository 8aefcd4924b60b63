"""Inference: Flux pipelines over the framework's backbone, sampling of process grids."""
