"""A contact sheet of samples from a tiny Flux directory, drawn by the stock diffusers FluxPipeline."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from pm_lightning.data.synth import TRAIN_DOMAINS
from pm_lightning.tiny.corpus import VAL_SPLIT_SEED, frame_caption, sequences

CELL = 192


def generate(pipe, caption: str, size: int, seed: int, steps: int, max_sequence_length: int) -> Image.Image:
    """One image from the stock pipeline (guidance 1.0, as trained)."""
    g = torch.Generator().manual_seed(seed)
    return pipe(caption, height=size, width=size, num_inference_steps=steps, guidance_scale=1.0,
                generator=g, max_sequence_length=max_sequence_length).images[0]


def sample_sheet(model_dir: str | Path, domains=TRAIN_DOMAINS, steps: int = 24, seed: int = 0) -> Image.Image:
    """One row per domain (a held-out validation sequence's captions): the true final frame, then
    generated frames for steps 1, middle and last at 64 px (shown 3x) and the last step at 192 px."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    max_len = pipe.tokenizer_2.model_max_length
    heads = ["truth (last step)", "64 px: step 1", "64 px: middle step", "64 px: last step", "192 px: last step"]
    label_w, gap, head_h = 150, 4, 16
    sheet = Image.new("RGB", (label_w + len(heads) * (CELL + gap), head_h + len(domains) * (CELL + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, head in enumerate(heads):
        draw.text((label_w + c * (CELL + gap) + 4, 2), head, fill="black")
    for r, domain in enumerate(domains):
        seq = sequences([domain], VAL_SPLIT_SEED, 1, CELL)[0]
        n = len(seq.frames)
        y = head_h + r * (CELL + gap)
        draw.text((4, y + 4), _wrap(f"{domain}: {seq.caption}", 24), fill="black")
        cells = [seq.frames[-1]]
        for k in (0, n // 2, n - 1):
            img = generate(pipe, frame_caption(seq, k), 64, seed + r, steps, max_len)
            cells.append(img.resize((CELL, CELL), Image.NEAREST))
        cells.append(generate(pipe, frame_caption(seq, n - 1), CELL, seed + r, steps, max_len))
        for c, img in enumerate(cells):
            sheet.paste(img, (label_w + c * (CELL + gap), y))
    return sheet


def _wrap(text: str, width: int) -> str:
    """Greedy word wrap for the row labels."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])
