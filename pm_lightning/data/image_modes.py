"""Every image that reaches a model or an encoder becomes 8-bit RGB here, by one documented rule.

- RGB: unchanged.
- Transparency (RGBA, LA, PA, a palette with a transparent index): composited over white, as a
  frame drawn on paper (the synthetic corpus and the exporters use white backgrounds).
- Grayscale (L, 1) and palettes (P): replicated / expanded to RGB.
- 16-bit grayscale (I;16 and its variants): scaled by 1/257 to 8 bit, then replicated.
- CMYK, YCbCr, LAB, HSV: PIL's own conversion to RGB.
- 32-bit integer (I) and float (F) images have no agreed range: refused with a message that says to
  save them as 8-bit images first.

`frames_as_rgb` also refuses an empty list and anything that is not a PIL image, naming its index, so
that a wrong argument fails at the door and not deep inside an encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def as_rgb(img: Image.Image, what: str = "image") -> Image.Image:
    """`img` as an 8-bit RGB image (the same object when it is RGB already); ValueError for I and F images."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"{what} is a {type(img).__name__}, not a PIL image: open it with PIL.Image.open(...)")
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in TRANSPARENT_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16"):
        wide = np.asarray(img, dtype=np.uint32)
        return Image.fromarray((wide // 257).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        raise ValueError(
            f"{what} is a {'32-bit integer' if mode == 'I' else 'floating-point'} image (PIL mode {mode}) with no "
            f"agreed value range: save it as an 8-bit PNG/JPEG (RGB, grayscale or RGBA) first"
        )
    return img.convert("RGB")


def frames_as_rgb(images: Sequence[Image.Image], what: str = "frame") -> list[Image.Image]:
    """Every image of a non-empty sequence as RGB (see the module rules); errors name the index."""
    images = list(images)
    if not images:
        raise ValueError(f"no {what}s given: need at least one image")
    return [as_rgb(im, f"{what} {k}") for k, im in enumerate(images)]


def same_size(images: Sequence[Image.Image], size: tuple[int, int] | None = None) -> tuple[list[Image.Image], bool]:
    """(images resized to `size` or the first image's size with bicubic filtering, whether any was resized)."""
    images = list(images)
    size = size or images[0].size
    out = [im if im.size == size else im.resize(size, Image.Resampling.BICUBIC) for im in images]
    return out, any(a is not b for a, b in zip(out, images))
