"""A frame repeated as a generator repeats it: never bit-identical (the damaged sequences of the adaptive-steps
benchmark, the guard calibration and the change-metric training)."""

from __future__ import annotations

import io

from PIL import Image


def near_duplicate(image: Image.Image, quality: int = 75) -> Image.Image:
    """A JPEG round trip of `image`: a duplicate frame as a generator would repeat it (not bit-identical)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
