"""The embedded models, built on CPU: the tiny Flux (`python -m pm_lightning.tiny_base`) and the tiny evaluators (`python -m pm_lightning.tiny_eval`)."""
