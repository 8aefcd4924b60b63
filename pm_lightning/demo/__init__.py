"""The web demo (`python -m pm_lightning.app`): the model session behind it and the Gradio page."""
