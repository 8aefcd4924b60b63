"""How much a run needs: the analytic per-GPU memory plan (formulas, the model's shape, the plan and its tables)."""
