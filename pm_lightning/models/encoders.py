"""CLIP image/text embeddings (open_clip) and DINO patch tokens (transformers), one loading path.

`Encoders.load(clip=..., dino=..., device=...)`:
- clip="tiny": the embedded evaluator in data/tiny-eval/clip (`make tiny-eval`), loaded by
  open_clip's own factory through its "local-dir:" schema;
  a local directory: the same format (open_clip_config.json + weights);
  "MODEL/PRETRAINED" (e.g. "ViT-L-14/openai") or "hf-hub:org/name": open_clip's pretrained weights.
- dino="tiny": the tiny CLIP's visual tower patch tokens (the tiny CLIP is the only encoder the
  project trains; docs/EVALUATION.md says why); anything else: a DINOv2 hub id or local
  directory for `transformers.AutoModel` (e.g. "facebook/dinov2-base").
All outputs are L2-normalised along the feature dimension and live on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from pm_lightning.core.paths import tiny_eval_dir
from pm_lightning.data.image_modes import frames_as_rgb

TINY = "tiny"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class EncoderNotFound(FileNotFoundError):
    """A pretrained encoder that is not available on this machine."""


def _missing(kind: str, spec: str, looked: str, err: Exception | None = None) -> EncoderNotFound:
    why = f" ({type(err).__name__}: {err})" if err is not None else ""
    return EncoderNotFound(
        f"{kind} encoder {spec!r} is not available: looked for {looked}{why}. "
        f"Use {kind.lower()}='tiny' for the embedded evaluators in {tiny_eval_dir()} (built by `make tiny-eval`), "
        f"or give a local directory."
    )


def _rgb(images: list[Image.Image]) -> list[Image.Image]:
    """RGB by the rules of `data/image_modes.py`; any size is fine (each image is preprocessed on its own)."""
    return frames_as_rgb(images, "image")


@dataclass
class _Clip:
    model: Any
    preprocess: Callable
    tokenizer: Callable


def load_clip(spec: str, device: str, root: Path | None = None) -> _Clip:
    """open_clip model, preprocessing and tokenizer for a spec (see module docstring)."""
    # lazy: open_clip, 8 s before evaluate / tiny_eval read their flags (docs/ARCHITECTURE.md, "Start-up")
    import open_clip

    if spec == TINY:
        clip_dir = Path(root or tiny_eval_dir()) / "clip"
        if not (clip_dir / "open_clip_config.json").is_file():
            raise EncoderNotFound(
                f"the embedded tiny CLIP is missing: looked for {clip_dir}/open_clip_config.json; "
                f"build it with `make tiny-eval`"
            )
        name, pretrained, looked = f"local-dir:{clip_dir}", None, f"{clip_dir}"
    elif spec.startswith(("hf-hub:", "local-dir:")):
        name, pretrained, looked = spec, None, spec
    elif Path(spec).exists() or spec.startswith((".", "/", "~")):
        path = Path(spec).expanduser()
        if not (path / "open_clip_config.json").is_file():
            raise _missing("CLIP", spec, f"{path}/open_clip_config.json (open_clip local-dir format)")
        name, pretrained, looked = f"local-dir:{path}", None, str(path)
    else:
        name, _, pretrained = spec.partition("/")
        pretrained = pretrained or None
        looked = f"open_clip model {name!r} with pretrained weights {pretrained!r} (local cache or download)"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except (OSError, RuntimeError, ValueError) as err:
        raise _missing("CLIP", spec, looked, err) from err
    return _Clip(model.eval(), preprocess, tokenizer)


class _ClipPatches(torch.nn.Module):
    """Patch tokens of an open_clip ViT visual tower (after its final LayerNorm, no CLS)."""

    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.visual._embeds(pixels)  # (N, 1+P, W)
        x = self.visual.transformer(x)
        _, tokens = self.visual._pool(x)  # (N, P, W)
        return tokens


def load_dino(spec: str, device: str, clip: _Clip | None) -> tuple[torch.nn.Module, Callable]:
    """(patch-token model (N,3,H,W) -> (N,P,E), preprocessing PIL -> (3,H,W))."""
    if spec == TINY:
        visual = getattr(clip.model, "visual", None) if clip is not None else None
        if not (hasattr(visual, "_embeds") and hasattr(visual, "_pool")):
            raise ValueError(
                "dino='tiny' takes the patch tokens of the CLIP's open_clip ViT visual tower, and this CLIP "
                "has none: use clip='tiny' or give a DINOv2 model (e.g. dino='facebook/dinov2-base')"
            )
        return _ClipPatches(clip.model.visual).eval(), clip.preprocess
    # lazy: transformers' AutoModel, 2 s, only for a DINOv2 encoder (docs/ARCHITECTURE.md, "Start-up")
    from transformers import AutoImageProcessor, AutoModel

    looked = f"a transformers DINOv2 model at {spec!r} (local directory, or hub id in the local cache / download)"
    try:
        model = AutoModel.from_pretrained(spec).to(device).eval()
    except (OSError, ValueError) as err:
        raise _missing("DINO", spec, looked, err) from err
    try:
        processor = AutoImageProcessor.from_pretrained(spec)
        preprocess = lambda im: processor(images=im, return_tensors="pt")["pixel_values"][0]  # noqa: E731
    except (OSError, ValueError):  # a bare model directory: resize to the config's size, ImageNet stats
        # lazy: torchvision, 3 s, only for a DINOv2 encoder (docs/ARCHITECTURE.md, "Start-up")
        from torchvision import transforms as T

        size = model.config.image_size
        preprocess = T.Compose(
            [
                T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
    return _HFPatches(model), preprocess


class _HFPatches(torch.nn.Module):
    """Patch tokens of a transformers DINOv2 model: last_hidden_state without CLS and register tokens."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.skip = 1 + getattr(model.config, "num_register_tokens", 0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state[:, self.skip :]  # (N, P, E)


class Encoders:
    """CLIP image/text embeddings and DINO patch tokens, all L2-normalised, on CPU tensors."""

    def __init__(
        self,
        clip: _Clip,
        dino: torch.nn.Module,
        dino_preprocess: Callable,
        device: str,
        names: dict,
        batch_size: int = 64,
        dtype: torch.dtype = torch.float32,
    ):
        self.clip_model, self.preprocess, self.tokenizer = clip.model, clip.preprocess, clip.tokenizer
        self.dino, self.dino_preprocess = dino, dino_preprocess
        self.device, self.names, self.batch_size, self.dtype = device, names, batch_size, dtype

    @classmethod
    def load(
        cls,
        clip: str = TINY,
        dino: str = TINY,
        device: str = "cpu",
        root: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Encoders:
        """Load both encoders (weights in `dtype`, embeddings returned as fp32 CPU tensors); `root` only moves where
        "tiny" is looked for.

        Raises EncoderNotFound (a FileNotFoundError) naming what was looked for and the "tiny" fallback.
        """
        c = load_clip(clip, device, Path(root) if root is not None else None)
        d, dpre = load_dino(dino, device, c)
        c.model.to(dtype)
        return cls(c, d.to(device, dtype), dpre, device, {"clip": clip, "dino": dino}, dtype=dtype)

    def _batched(self, fn: Callable, items: list, prep: Callable) -> torch.Tensor:
        out = []
        for i in range(0, len(items), self.batch_size):
            x = torch.stack([prep(it) for it in items[i : i + self.batch_size]])  # (B, 3, H, W)
            x = x.to(self.device, self.dtype)
            out.append(fn(x).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def image_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, D) L2-normalised CLIP image embeddings."""
        return F.normalize(self._batched(self.clip_model.encode_image, _rgb(images), self.preprocess), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """(N, D) L2-normalised CLIP text embeddings."""
        out = [
            self.clip_model.encode_text(self.tokenizer(texts[i : i + self.batch_size]).to(self.device)).float().cpu()
            for i in range(0, len(texts), self.batch_size)
        ]
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def patch_tokens(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, P, E) L2-normalised patch tokens (no CLS) of the DINO encoder."""
        return F.normalize(self._batched(self.dino, _rgb(images), self.dino_preprocess), dim=-1)
