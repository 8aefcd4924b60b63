"""Models: the Flux backbone, adapters (LoRA / asymmetric / masked) and representation alignment."""
