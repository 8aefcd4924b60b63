"""Images to whichever loggers a run has: W&B (and any logger with Lightning's `log_image(key, images, step=...)`),
TensorBoard (`add_image` per image, the captions as one text entry); loggers without images (CSV) are left out."""

from __future__ import annotations

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image


def log_images(logger, key: str, images: list[Image.Image], captions: list[str], step: int) -> bool:
    """Log `images` under `key` at `step`; False when this logger takes no images."""
    if hasattr(logger, "log_image"):
        logger.log_image(key=key, images=images, caption=captions, step=step)
        return True

    if not isinstance(logger, TensorBoardLogger):
        return False
    writer = logger.experiment
    for i, image in enumerate(images):
        writer.add_image(f"{key}/{i}", np.asarray(image.convert("RGB")), step, dataformats="HWC")  # (H, W, 3) uint8
    writer.add_text(f"{key}/captions", "\n".join(f"{i}. {c}" for i, c in enumerate(captions)), step)
    return True
