"""pm_lightning: procedural sequence generation (ProcessMaker, MakeAnything) on Flux DiTs with Lightning."""

__version__ = "0.1.0"
