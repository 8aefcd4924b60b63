"""Building and pretraining the embedded tiny Flux base (`python -m pm_lightning.tiny_base`)."""
