"""FluxBackbone: one loading path for every scale, text encoding (+ on-disk cache), VAE, packing, ids.

`source` is a variant name from `VARIANTS` ("flux-dev", "flux-schnell", "tiny"), a local
diffusers-format pipeline directory, or a hub id (found by `models/weights.py`). Every component is loaded with the stock
diffusers / transformers `from_pretrained(..., subfolder=...)`; the math mirrors `FluxPipeline`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from pm_lightning.models.text_embedding_cache import TextEmbeddingCache
from pm_lightning.models.variants import VARIANTS, Variant, find_variant
from pm_lightning.models.weights import COMPONENTS, local_root, not_found_error, resolve_source

# -- pure functions: 2x2 latent packing and image position ids, exactly as FluxPipeline -------------


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, h/2 * w/2, 4C) tokens, as `FluxPipeline._pack_latents`."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent height and width must be even to pack 2x2, got {h}x{w}")
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2)  # (B, C, h/2, 2, w/2, 2)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)  # (B, N, 4C)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) tokens -> (B, C, h, w) latents; the exact inverse of `pack`."""
    b, n, d = tokens.shape
    if n != (h // 2) * (w // 2) or d % 4:
        raise ValueError(f"{n} tokens of width {d} do not unpack to a {h}x{w} latent")
    x = tokens.reshape(b, h // 2, w // 2, d // 4, 2, 2)  # (B, h/2, w/2, C, 2, 2)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, h/2, 2, w/2, 2)
    return x.reshape(b, d // 4, h, w)  # (B, C, h, w)


def image_ids(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids (0, row, col) of the packed tokens of an h x w latent."""
    rows = torch.arange(h // 2, device=device).repeat_interleave(w // 2)
    cols = torch.arange(w // 2, device=device).repeat(h // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).to(dtype)  # (N, 3)


def vae_encode(vae, pixels: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 16, H/8, W/8) Flux latents: (z - shift_factor) * scaling_factor (the mode of the
    VAE's posterior unless `sample`). The one encoding of training and of the latent cache."""
    cfg = vae.config
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()  # (B, C, h, w)
    return (z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor


def load_vae(source: str, dtype: torch.dtype = torch.float32):
    """The AutoencoderKL of `source` (variant name, local directory or hub id) alone, as `from_pretrained` loads it."""
    # lazy: diffusers, 16 s before export / params / tiny_base read their flags (docs/ARCHITECTURE.md, "Start-up")
    from diffusers import AutoencoderKL

    variant = VARIANTS.get(source)
    location = variant.location() if variant else source
    try:
        return AutoencoderKL.from_pretrained(
            local_root(location), subfolder="vae", torch_dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError) as err:
        raise not_found_error(location, err) from err


# -- the backbone -------------------------------------------------------------------------------------


class FluxBackbone(nn.Module):
    """Frozen Flux components (transformer, VAE, CLIP + T5 encoders, tokenizers, scheduler) and their math.

    Build with `FluxBackbone.from_pretrained(source)`. Everything is frozen on load; adapters make
    parts of the transformer trainable afterwards. Text encoders and VAE always stay in eval mode.
    """

    def __init__(
        self,
        transformer,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        scheduler,
        max_sequence_length: int = 512,
        text_cache_dir: str | os.PathLike | None = None,
        source: str = "",
        guidance: float = 1.0,
        text_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.transformer, self.vae = transformer, vae
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2, self.scheduler = tokenizer, tokenizer_2, scheduler
        self.max_sequence_length = max_sequence_length
        self.text_cache_dir = Path(text_cache_dir) if text_cache_dir else None
        # the text encoders' dtype (part of the cache key), known without them when they are not loaded
        self.text_dtype = text_dtype or (text_encoder_2.dtype if text_encoder_2 is not None else torch.float32)
        self.source = source
        self.text_cache = (
            TextEmbeddingCache(self.text_cache_dir, source, max_sequence_length, self.text_dtype)
            if self.text_cache_dir
            else None
        )
        self.guidance = guidance
        self._pipeline = None  # built once: diffusers' offload hooks and settings live on the pipeline object
        self._parked_vae: list = []  # the VAE kept in CPU memory outside the module tree (`park_vae`)
        self.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        text_cache_dir: str | os.PathLike | None = None,
        max_sequence_length: int | None = None,
        text_encoders: bool = True,
        image_models: bool = True,
    ) -> FluxBackbone:
        """Load every component of `source` (variant name, local directory or hub id) in `dtype`.

        `max_sequence_length` (T5 tokens) defaults to the variant's, else the T5 tokenizer's
        `model_max_length` capped at 512. A missing model raises `BackboneNotFoundError`.
        `text_encoders=False` leaves CLIP and T5 unloaded (None): every caption must then be in `text_cache_dir`
        (`python -m pm_lightning.text_cache` fills it), and a missing one raises `MissingTextEmbeddings`.
        `image_models=False` leaves the transformer and VAE unloaded (text encoding only).
        """
        if not text_encoders and text_cache_dir is None:
            raise ValueError("the text encoders can stay unloaded only with a text cache (text_cache_dir)")
        # lazy: diffusers + transformers, 16 s before export / params / tiny_base read their flags (docs/ARCHITECTURE.md, "Start-up")
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        variant: Variant | None = VARIANTS.get(source)
        root = local_root(variant.location() if variant else source)
        kw = dict(local_files_only=True)  # `root` is a local directory now
        try:
            parts = dict(
                scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler", **kw),
                tokenizer=AutoTokenizer.from_pretrained(root, subfolder="tokenizer", **kw),
                tokenizer_2=AutoTokenizer.from_pretrained(root, subfolder="tokenizer_2", **kw),
                text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", dtype=dtype, **kw)
                if text_encoders
                else None,
                text_encoder_2=T5EncoderModel.from_pretrained(root, subfolder="text_encoder_2", dtype=dtype, **kw)
                if text_encoders
                else None,
                vae=AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype, **kw)
                if image_models
                else None,
                transformer=FluxTransformer2DModel.from_pretrained(
                    root, subfolder="transformer", torch_dtype=dtype, **kw
                )
                if image_models
                else None,
            )
        except (OSError, ValueError) as err:  # hub/HTTP errors subclass OSError; bad repo ids raise ValueError
            raise not_found_error(variant.location() if variant else source, err) from err
        if max_sequence_length is None:
            max_sequence_length = (
                variant.max_sequence_length if variant else min(parts["tokenizer_2"].model_max_length, 512)
            )
        backbone = cls(
            **parts,
            max_sequence_length=max_sequence_length,
            text_cache_dir=text_cache_dir,
            source=variant.name if variant else source,
            text_dtype=dtype,
        )
        if image_models:
            backbone.set_gradient_checkpointing(gradient_checkpointing)
        return backbone

    # -- state ------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> FluxBackbone:
        """Only the transformer follows `mode`; the frozen encoders and VAE stay in eval (no dropout)."""
        super().train(False)
        if self.transformer is not None:
            self.transformer.train(mode)
        self.training = mode
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute transformer block activations in the backward pass (memory for compute)."""
        if enabled:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()

    @property
    def device(self) -> torch.device:
        """The transformer's device (the text encoders' when only they are loaded)."""
        module = self.transformer if self.transformer is not None else self.text_encoder_2
        return next(module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for Flux): 2 ** (number of VAE blocks - 1)."""
        return 2 ** (len(self.any_vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.any_vae.config.latent_channels

    @property
    def any_vae(self):
        """The VAE, in the module tree or parked in CPU memory."""
        return self.vae if self.vae is not None else (self._parked_vae[0] if self._parked_vae else None)

    def park_vae(self) -> None:
        """Keep the VAE in CPU memory and out of the module tree, so moving the model (Lightning's `.to(device)`,
        DDP's parameter broadcast) leaves it there: training from the latent cache never needs it on the GPU."""
        if self.vae is not None:
            self._parked_vae = [self.vae.to("cpu")]
            self.vae = None

    @contextmanager
    def vae_on_device(self):
        """Inside: the VAE on the transformer's device (a parked one is moved there, then back to CPU memory)."""
        if not self._parked_vae or self.vae is not None:
            yield self.vae
            return
        self.vae = self._parked_vae[0].to(self.device)
        try:
            yield self.vae
        finally:
            self._parked_vae[0] = self.vae.to("cpu")
            self.vae = None
            self._pipeline = None

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    # -- text -------------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_text_uncached(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """FluxPipeline.encode_prompt: CLIP pooled output + T5 last hidden state."""
        clip_ids = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids  # (B, 77)
        clip_dev = next(self.text_encoder.parameters()).device
        pooled = self.text_encoder(clip_ids.to(clip_dev), output_hidden_states=False).pooler_output  # (B, P)
        t5_ids = self.tokenizer_2(
            captions, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        ).input_ids  # (B, T)
        t5_dev = next(self.text_encoder_2.parameters()).device
        embeds = self.text_encoder_2(t5_ids.to(t5_dev), output_hidden_states=False)[0]  # (B, T, D)
        return embeds.to(self.text_encoder_2.dtype), pooled.to(self.text_encoder.dtype)

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Captions -> (prompt_embeds (B, T, D), pooled (B, P), txt_ids (T, 3)), as FluxPipeline.encode_prompt.

        With `text_cache_dir` set, each caption's embeddings are read from / written to
        `<dir>/<encoder id>/<sha256(caption)>.safetensors` (`TextEmbeddingCache`, `models/text_embedding_cache.py`).
        """
        captions = [captions] if isinstance(captions, str) else list(captions)
        if self.text_cache is None:
            embeds, pooled = self._encode_text_uncached(captions)
        else:
            embeds, pooled = self._encode_text_cached(captions)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=self.text_dtype)  # (T, 3)
        return embeds, pooled, txt_ids

    def _encode_text_cached(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Read cached captions, encode the missing ones in one batch and write them."""
        cache = self.text_cache
        paths = [cache.path(c) for c in captions]
        found = cache.load(set(paths))
        missing = sorted({c for c, p in zip(captions, paths) if p not in found})
        if missing and self.text_encoder is None:
            raise cache.missing_error(missing)
        if missing:
            embeds, pooled = self._encode_text_uncached(missing)
            for i, caption in enumerate(missing):
                found[cache.path(caption)] = cache.save(caption, embeds[i], pooled[i])
        device = self.device
        embeds = torch.stack([found[p]["prompt_embeds"] for p in paths]).to(device)  # (B, T, D)
        pooled = torch.stack([found[p]["pooled"] for p in paths]).to(device)  # (B, P)
        return embeds, pooled

    # -- images -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 16, H/8, W/8) Flux latents: (z - shift_factor) * scaling_factor."""
        return vae_encode(self.vae, pixels, sample, generator)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 16, h, w) Flux latents -> (B, 3, 8h, 8w) pixels in [-1, 1]; the inverse of `encode_images`."""
        cfg = self.vae.config
        z = latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)  # (B, C, h, w)
        return self.vae.decode(z.to(self.vae.device, self.vae.dtype)).sample.clamp(-1, 1)

    # -- transformer ------------------------------------------------------------------------------

    def predict(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled: torch.Tensor,
        txt_ids: torch.Tensor,
        img_ids: torch.Tensor,
        guidance: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Flux velocity for packed tokens (B, N, 64) at `timestep` in [0, 1] -> (B, N, 64).

        `guidance` defaults to the training constant (1.0) when the transformer embeds guidance.
        """
        b = hidden_states.shape[0]
        if self.guidance_embeds:
            guidance = self.guidance if guidance is None else guidance
            guidance = torch.as_tensor(guidance, device=hidden_states.device, dtype=torch.float32).expand(b)
        else:
            guidance = None
        timestep = torch.as_tensor(timestep, device=hidden_states.device).to(hidden_states.dtype).expand(b)
        return self.transformer(
            hidden_states=hidden_states,
            timestep=timestep,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=prompt_embeds,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]

    forward = predict

    def pipeline(self):
        """The stock `diffusers.FluxPipeline` sharing these components (for sampling), built on first use and kept,
        so `enable_model_cpu_offload` and the like, which record state on the pipeline, hold for every call."""
        # lazy: diffusers, 16 s before export / params / tiny_base read their flags (docs/ARCHITECTURE.md, "Start-up")
        from diffusers import FluxPipeline

        parts = {name: getattr(self, name) for name in COMPONENTS}
        if self._pipeline is None or any(getattr(self._pipeline, k) is not v for k, v in parts.items()):
            self._pipeline = FluxPipeline(**parts)  # first use, or a component was replaced since
        return self._pipeline


def meta_transformer(base: str | Variant):
    """`base`'s FluxTransformer2DModel on the `meta` device: its shape, no weights, no storage. `base` is a variant,
    or what `--base` takes: a variant's name or hub id, a pipeline directory, another hub id (its config only)."""
    # lazy: diffusers, 16 s before export / params / tiny_base read their flags (docs/ARCHITECTURE.md, "Start-up")
    from diffusers import FluxTransformer2DModel

    variant = base if isinstance(base, Variant) else find_variant(base)
    config = variant.transformer_config if variant is not None else None
    if config is None:
        source = variant.location() if variant is not None else base
        root = source if Path(source).expanduser().is_dir() else resolve_source(source)  # a folder: its transformer/
        try:
            config = FluxTransformer2DModel.load_config(root, subfolder="transformer")
        except (OSError, ValueError) as err:
            raise not_found_error(source, err) from err
    with torch.device("meta"):
        return FluxTransformer2DModel.from_config(config)
