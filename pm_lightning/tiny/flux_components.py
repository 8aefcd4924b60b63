"""The tiny Flux's components: configs built in code, word-level tokenizers trained offline, assembly.

Every component is a stock diffusers / transformers class, so `FluxPipeline.from_pretrained`
loads the saved directory like any Flux checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from pm_lightning.models.variants import TINY_FLUX_TRANSFORMER

TEXT_WIDTHS = ("joint_attention_dim", "pooled_projection_dim")  # = text_dim, the text encoders' width

SPECIALS = ("[PAD]", "[EOS]", "[UNK]")  # ids 0, 1, 2; EOS must not be 2 (CLIP's legacy argmax pooling)
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

# Flux.1-dev's scheduler config: the sampler's resolution-dependent shift matches training's "flux" shift.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


@dataclass
class TinyFluxConfig:
    """Shapes of the tiny Flux pipeline.

    Attributes:
        clip_max_length: CLIP slot `model_max_length` (77 as CLIP-L, what FluxPipeline pads to).
        t5_max_length: T5 slot `model_max_length` (the `max_sequence_length` to sample with).
        text_dim: hidden width of both text encoders (= joint_attention_dim = pooled_projection_dim).
        vae_channels: AutoencoderKL block widths; four blocks = 8x downsampling, as Flux; three = 4x
            (FluxPipeline reads the factor from the block count; the rest of pm_lightning assumes 8x).
        vae_layers: ResNet layers per VAE block (`layers_per_block`).
        vae_groups: GroupNorm groups in the VAE. With few channels per group, a flat-coloured
            region normalises to a few signs and its colour is lost; one group keeps it.
        latent_channels: VAE latent channels; the transformer reads 4x as many per token (2x2 packing),
            so `transformer["in_channels"]` must equal 4 * latent_channels (`with_latents` sets both).
        transformer: FluxTransformer2DModel kwargs.
    """

    clip_max_length: int = 77
    t5_max_length: int = 32
    text_dim: int = 64
    text_layers: int = 2
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)
    vae_layers: int = 1
    vae_groups: int = 1  # one group: more than 1 lets flat colours collapse in the output GroupNorm
    latent_channels: int = 16
    transformer: dict = field(  # the text widths come from text_dim (`transformer` below)
        default_factory=lambda: {k: v for k, v in TINY_FLUX_TRANSFORMER.items() if k not in TEXT_WIDTHS}
    )

    def __post_init__(self):
        if len(self.vae_channels) not in (3, 4):
            raise ValueError(f"vae_channels needs 4 blocks (8x, as Flux) or 3 (4x), got {self.vae_channels}")
        if self.transformer["in_channels"] != 4 * self.latent_channels:
            raise ValueError("transformer.in_channels must be 4 * latent_channels (2x2 packing)")
        if sum(self.transformer["axes_dims_rope"]) != self.transformer["attention_head_dim"]:
            raise ValueError("transformer.axes_dims_rope must sum to attention_head_dim")


def with_latents(latent_channels: int, vae_channels: tuple[int, ...] | None = None, vae_layers: int = 1):
    """A TinyFluxConfig with another VAE: `latent_channels` (the transformer's in_channels follow, 4x) and
    optionally other block widths / layers per block; everything else as the committed base."""
    default = TinyFluxConfig()
    return TinyFluxConfig(
        vae_channels=tuple(vae_channels or default.vae_channels),
        vae_layers=vae_layers,
        latent_channels=latent_channels,
        transformer={**default.transformer, "in_channels": 4 * latent_channels},
    )


def train_tokenizer(texts: Iterable[str], model_max_length: int):
    """A word-level `PreTrainedTokenizerFast` (lowercase, words + punctuation, EOS appended) from `texts`."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(SPECIALS), min_frequency=1))
    assert [tok.token_to_id(s) for s in SPECIALS] == [PAD_ID, EOS_ID, UNK_ID]
    tok.post_processor = processors.TemplateProcessing(
        single="$A [EOS]", pair="$A [EOS] $B [EOS]", special_tokens=[("[EOS]", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        eos_token="[EOS]",
        unk_token="[UNK]",
        model_max_length=model_max_length,
        padding_side="right",
    )


def text_encoders(cfg: TinyFluxConfig, vocab_size: int):
    """(CLIPTextModel, T5EncoderModel), random, with the tokenizer's special ids."""
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.text_dim,
            intermediate_size=4 * cfg.text_dim,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=2,
            max_position_embeddings=cfg.clip_max_length,
            projection_dim=cfg.text_dim,
            pad_token_id=PAD_ID,
            bos_token_id=EOS_ID,
            eos_token_id=EOS_ID,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=cfg.text_dim,
            d_kv=16,
            d_ff=4 * cfg.text_dim,
            num_layers=cfg.text_layers,
            num_heads=4,
            relative_attention_num_buckets=16,
            relative_attention_max_distance=64,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            decoder_start_token_id=PAD_ID,
            tie_word_embeddings=False,
        )
    )
    return clip, t5


def vae(cfg: TinyFluxConfig):
    """A small AutoencoderKL with Flux's layout (by default 16 latent channels, 8x, no quant convs)."""
    n = len(cfg.vae_channels)
    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=cfg.vae_layers,
        norm_num_groups=cfg.vae_groups,
        sample_size=192,
        scaling_factor=1.0,
        shift_factor=0.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        force_upcast=False,
    )
    # Start with a near-deterministic posterior (std ~ 0.02): with the usual logvar ~ 0 the decoder
    # first sees mostly noise, which slows a small VAE's training by hundreds of steps.
    with torch.no_grad():
        conv = model.encoder.conv_out
        conv.weight[cfg.latent_channels :].mul_(0.01)
        conv.bias[cfg.latent_channels :].fill_(-8.0)
    return model


def transformer(cfg: TinyFluxConfig):
    """A random FluxTransformer2DModel reading `text_dim`-wide text features."""
    return FluxTransformer2DModel(
        **cfg.transformer, joint_attention_dim=cfg.text_dim, pooled_projection_dim=cfg.text_dim
    )


def scheduler():
    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def build_pipeline(cfg: TinyFluxConfig, texts: list[str]):
    """A random tiny FluxPipeline whose tokenizers are trained on `texts`."""
    tok_clip = train_tokenizer(texts, cfg.clip_max_length)
    tok_t5 = train_tokenizer(texts, cfg.t5_max_length)
    clip, t5 = text_encoders(cfg, len(tok_clip))
    return FluxPipeline(
        scheduler=scheduler(),
        vae=vae(cfg),
        text_encoder=clip,
        tokenizer=tok_clip,
        text_encoder_2=t5,
        tokenizer_2=tok_t5,
        transformer=transformer(cfg),
    )


def portable_tokenizer_names(out: str | Path) -> None:
    """Name the tokenizers `PreTrainedTokenizerFast` (transformers 5 saves its alias `TokenizersBackend`,
    which transformers 4 cannot resolve); both versions load the same tokenizer.json under that name."""
    out = Path(out)
    index = json.loads((out / "model_index.json").read_text())
    for slot in ("tokenizer", "tokenizer_2"):
        index[slot] = ["transformers", "PreTrainedTokenizerFast"]
        cfg_path = out / slot / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def dir_size_mb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20
