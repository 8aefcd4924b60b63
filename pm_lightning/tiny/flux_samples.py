"""A contact sheet of samples from a tiny Flux directory, drawn by the stock diffusers FluxPipeline."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FluxPipeline
from PIL import Image, ImageDraw

from pm_lightning.data.synthetic_corpus import DOMAINS, HELDOUT_DOMAINS
from pm_lightning.tiny.frame_pools import VAL_SPLIT_SEED, frame_caption, sequences

CELL = 192
SMALL = 128  # display size of the 64 px colour samples
COLOUR_ROWS = {  # caption templates from the corpus, with the colour as the only change along a row
    "pixel_art": (
        "pixel art of a {c} heart. step 2: fill the heart with {c}",
        ("red", "orange", "yellow", "green", "blue", "purple", "pink"),
    ),
    "lego": (
        "a lego tower of eight {c} bricks on a gray baseplate. step 9: place the eighth {c} brick",
        ("red", "orange", "yellow", "white", "blue", "purple"),
    ),
    "garden": (
        "a garden of four {c} flowers. step 8: the {c} petals open",
        ("red", "orange", "yellow", "white", "blue", "purple", "pink"),
    ),
}


def generate(pipe, caption: str, size: int, seed: int, steps: int, max_sequence_length: int) -> Image.Image:
    """One image from the stock pipeline (guidance 1.0, as trained)."""
    g = torch.Generator().manual_seed(seed)
    return pipe(
        caption,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=1.0,
        generator=g,
        max_sequence_length=max_sequence_length,
    ).images[0]


def sample_sheet(model_dir: str | Path, domains=tuple(DOMAINS), steps: int = 24, seed: int = 0) -> Image.Image:
    """One row per domain (a held-out validation sequence's captions): the true final frame, then
    generated frames for steps 1, middle and last at 64 px (shown 3x) and the last step at 192 px."""
    pipe = FluxPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    max_len = pipe.tokenizer_2.model_max_length
    heads = ["truth (last step)", "64 px: step 1", "64 px: middle step", "64 px: last step", "192 px: last step"]
    label_w, gap, head_h = 150, 4, 16
    colour_h = head_h + len(COLOUR_ROWS) * (SMALL + head_h + gap)
    sheet = Image.new(
        "RGB", (label_w + len(heads) * (CELL + gap), head_h + len(domains) * (CELL + gap) + colour_h), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for c, head in enumerate(heads):
        draw.text((label_w + c * (CELL + gap) + 4, 2), head, fill="black")
    for r, domain in enumerate(domains):
        seq = sequences([domain], VAL_SPLIT_SEED, 1, CELL)[0]
        n = len(seq.frames)
        y = head_h + r * (CELL + gap)
        tag = " (held out of stage 1/2)" if domain in HELDOUT_DOMAINS else ""
        draw.text((4, y + 4), _wrap(f"{domain}{tag}: {seq.caption}", 24), fill="black")
        cells = [seq.frames[-1]]
        for k in (0, n // 2, n - 1):
            img = generate(pipe, frame_caption(seq, k), 64, seed + r, steps, max_len)
            cells.append(img.resize((CELL, CELL), Image.NEAREST))
        cells.append(generate(pipe, frame_caption(seq, n - 1), CELL, seed + r, steps, max_len))
        for c, img in enumerate(cells):
            sheet.paste(img, (label_w + c * (CELL + gap), y))
    y = head_h + len(domains) * (CELL + gap)
    draw.text((4, y + 2), "colour words (64 px, one caption per cell, only the colour changes):", fill="black")
    for r, (template, colours) in enumerate(COLOUR_ROWS.values()):
        top = y + head_h + r * (SMALL + head_h + gap)
        draw.text((4, top + head_h + 4), _wrap(template.format(c="<colour>"), 24), fill="black")
        for c, colour in enumerate(colours):
            img = generate(pipe, template.format(c=colour), 64, seed + c, steps, max_len)
            draw.text((label_w + c * (SMALL + gap) + 4, top + 2), colour, fill="black")
            sheet.paste(img.resize((SMALL, SMALL), Image.NEAREST), (label_w + c * (SMALL + gap), top + head_h))
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
