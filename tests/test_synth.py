"""Synthetic corpus: determinism, frame counts, real accumulation, captions that match pixels, CLI layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pm_lightning.data.synthetic_canvas import COLOURS, NUMBERS
from pm_lightning.data.synthetic_corpus import (
    DOMAINS,
    HELDOUT_DOMAINS,
    TRAIN_DOMAINS,
    Sequence,
    blank_frame,
    contact_sheet,
    generate_sequence,
    write_corpus,
)

REPO = Path(__file__).resolve().parents[1]


def pixels(img) -> np.ndarray:
    """(H, W, 3) uint8 array of an image."""
    return np.asarray(img.convert("RGB"))


def test_domain_lists():
    assert len(TRAIN_DOMAINS) >= 6 and len(HELDOUT_DOMAINS) >= 2
    assert not set(TRAIN_DOMAINS) & set(HELDOUT_DOMAINS)
    assert set(TRAIN_DOMAINS) | set(HELDOUT_DOMAINS) == set(DOMAINS)
    assert set(DOMAINS.values()) == {4, 9}
    assert {DOMAINS[d] for d in TRAIN_DOMAINS} == {4, 9}  # training sees both layouts


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_sequence_shape_and_captions(domain):
    seq = generate_sequence(domain, seed=3)
    assert isinstance(seq, Sequence) and seq.domain == domain
    assert len(seq.frames) == len(seq.steps) == DOMAINS[domain]
    assert all(f.size == (64, 64) and f.mode == "RGB" for f in seq.frames)
    for text in [seq.caption, *seq.steps]:
        assert 0 < len(text.split()) <= 20 and text == text.lower().strip()


def test_same_seed_same_pixels_other_seed_differs():
    for domain in DOMAINS:
        a, b = generate_sequence(domain, 7), generate_sequence(domain, 7)
        assert a.caption == b.caption and a.steps == b.steps
        assert all(x.tobytes() == y.tobytes() for x, y in zip(a.frames, b.frames))
        others = [generate_sequence(domain, s) for s in range(8, 16)]
        assert any(o.caption != a.caption for o in others), domain
        assert all(o.frames[-1].tobytes() != a.frames[-1].tobytes() for o in others), domain


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("domain", list(DOMAINS))
def test_content_accumulates(domain, size):
    blank = pixels(blank_frame(domain, size))
    for seed in range(3):
        frames = [pixels(f) for f in generate_sequence(domain, seed, size).frames]
        final = frames[-1]
        changed = [int((f != blank).any(-1).sum()) for f in frames]
        done = [int((f == final).all(-1).sum()) for f in frames]
        assert changed[0] > 0 and changed[-1] > changed[0], (domain, changed)
        assert all(b >= a for a, b in zip(changed, changed[1:])), (domain, changed)  # never erased back to blank
        assert all(b > a for a, b in zip(done, done[1:])), (domain, done)  # every step brings it closer to the end


def test_other_sizes_draw_the_same_picture():
    for domain in DOMAINS:
        coarse = lambda size, domain=domain: pixels(
            generate_sequence(domain, 5, size).frames[-1].resize((8, 8), Image.BOX)
        ).astype(int)
        diff = np.abs(coarse(32) - coarse(256)).mean()
        assert diff < 20, (domain, diff)  # one layout in relative coordinates, whatever the size


def test_lego_caption_colour_is_the_drawn_colour():
    for seed in range(12):
        seq = generate_sequence("lego", seed)
        word = seq.caption.split(" of eight ")[1].split()[0]
        px = pixels(seq.frames[-1]).reshape(-1, 3)
        blank = tuple(pixels(blank_frame("lego"))[0, 0])
        counts = Counter(map(tuple, px))
        counts.pop(blank)
        assert counts.most_common(1)[0][0] == COLOURS[word], (seq.caption, counts.most_common(3))
        assert all(word in s for s in seq.steps[1:])


def candle_runs(frame) -> int:
    """Number of separate candle-red runs along the row through the candles."""
    row = pixels(frame)[round(0.26 * frame.height)]
    red = np.concatenate([[0], (row == (220, 50, 60)).all(-1).astype(int)])
    return int(np.sum(np.diff(red) == 1))


def test_cake_caption_counts_the_candles():
    seen = set()
    for seed in range(12):
        seq = generate_sequence("cake", seed)
        n = NUMBERS.index(seq.caption.split(" and ")[1].split()[0])
        assert candle_runs(seq.frames[-1]) == n and candle_runs(seq.frames[-2]) == 0, seq.caption
        assert NUMBERS[n] in seq.steps[-1]
        seen.add(n)
    assert len(seen) > 1


def tree_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_cli_writes_the_raw_folder_layout(tmp_path):
    out = tmp_path / "corpus"
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # a different hash seed must not change the corpus
    cmd = [
        sys.executable,
        "-m",
        "pm_lightning.synth",
        "--out",
        str(out),
        "--per-domain",
        "2",
        "--size",
        "32",
        "--seed",
        "4",
    ]
    subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(DOMAINS)
    for domain, frames in DOMAINS.items():
        seqs = sorted(p.name for p in (out / domain).iterdir())
        assert seqs == ["seq-000000", "seq-000001"]
        for name in seqs:
            folder = out / domain / name
            meta = json.loads((folder / "meta.json").read_text())
            pngs = sorted(p.name for p in folder.glob("*.png"))
            assert pngs == [f"{k:02d}.png" for k in range(frames)]
            assert isinstance(meta["caption"], str) and len(meta["steps"]) == frames
    again = tmp_path / "again"
    counts = write_corpus(again, per_domain=2, size=32, seed=4, progress=False)
    assert counts == {d: 2 for d in DOMAINS}
    assert tree_files(out) == tree_files(again)  # byte-identical PNGs and meta.json across processes


def test_write_corpus_subset_and_unknown_domain(tmp_path):
    assert write_corpus(tmp_path, per_domain=1, domains=HELDOUT_DOMAINS, progress=False) == {
        d: 1 for d in HELDOUT_DOMAINS
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(HELDOUT_DOMAINS)
    with pytest.raises(ValueError, match="unknown synthetic domain"):
        generate_sequence("watercolour", 0)


def test_contact_sheet_has_one_row_per_domain():
    sheet = contact_sheet(["lego", "cake"], per_row=2, size=16)
    assert sheet.height == 2 * (3 * 16 + 2) and sheet.width == 2 * 16 + 2 * (3 * 16 + 2)
