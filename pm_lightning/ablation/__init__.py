"""Ablations: a plan of rows x seeds, the jobs that train and evaluate them, statistics, W&B and the report."""
