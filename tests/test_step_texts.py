"""Step texts for generated frames (`inference/step_texts.py`): the training corpus' step vocabulary and the tiny
CLIP's zero-shot retrieval of each frame's step; `generate --adaptive` without `--steps` in tests/test_generate.py."""

from __future__ import annotations

import json
import tarfile
from types import SimpleNamespace

import pytest

from pm_lightning.data.synthetic_corpus import TRAIN_DOMAINS, generate_sequence, sequence_seed
from pm_lightning.inference import step_texts
from tests.conftest import REPO
from tests.test_adaptive import needs_tiny_eval


def test_the_vocabulary_is_the_training_corpus_step_texts_of_the_domain_or_of_every_training_domain():
    lego = step_texts.corpus_vocabulary("lego")
    first = generate_sequence("lego", sequence_seed(0, "lego", 0))  # `make shards`' first lego sequence
    assert set(first.steps) <= set(lego) and len(lego) == len(set(lego))
    assert not set(generate_sequence("cake", sequence_seed(0, "cake", 0)).steps) & set(lego)
    everything = step_texts.corpus_vocabulary(None)
    assert set(everything) == {t for d in TRAIN_DOMAINS for t in step_texts.corpus_vocabulary(d)}
    assert step_texts.corpus_vocabulary("origami") == everything  # a held-out domain: no texts of its own
    assert not set(generate_sequence("origami", sequence_seed(0, "origami", 0)).steps) & set(everything)


def test_given_steps_are_kept_and_another_clip_has_no_vocabulary():
    req = SimpleNamespace(steps=["a", "b"], clip="tiny", dino="tiny", domain="lego")
    assert step_texts.with_step_texts(None, req, []) == (req, {"source": "given with --steps"})
    real = SimpleNamespace(steps=None, clip="hf-hub:laion/CLIP-ViT-L-14", dino="tiny", domain="lego")
    same, info = step_texts.with_step_texts(None, real, [])
    assert same is real and info["source"] == "none: Delta_sem dropped" and "--steps" in info["why"]


@needs_tiny_eval
def test_retrieval_names_most_true_frames_steps_far_above_chance():
    """Never-trained lego sequences (split seed 1): the tiny CLIP retrieves the frame's own step text for most
    frames (bench/step_texts.py: 73.9% over 20 sequences), against 1 / 51 by chance."""
    from pm_lightning.models.encoders import Encoders

    encoders = Encoders.load(clip="tiny", dino="tiny", device="cpu")
    vocab = step_texts.corpus_vocabulary("lego")
    seqs = [generate_sequence("lego", sequence_seed(1, "lego", i)) for i in range(2)]
    hits = [g == t for s in seqs for g, t in zip(step_texts.retrieve(encoders, s.frames, vocab), s.steps)]
    assert len(hits) == 18 and sum(hits) / len(hits) > 10 / len(vocab)


@pytest.mark.slow
def test_the_vocabulary_is_what_make_shards_wrote():
    """The vocabulary equals the step texts of the training shards on disk (the slow tier builds them with
    `make shards`, whose train split takes synth's defaults, synthetic_corpus.TRAIN_SEED / TRAIN_PER_DOMAIN, the
    settings the vocabulary reads). Checked red: with step_texts.TRAIN_DOMAINS set to every domain (as shards
    written without `--no-held-out` would hold), the sets differ. The seed and count barely matter at this size: the
    vocabulary saturates at 176 texts (the same for 150 sequences per domain or seed 1)."""
    shards = sorted((REPO / "data" / "shards" / "train").glob("shard-*.tar"))
    assert shards, "no training shards: run `make shards`"
    on_disk = set()
    for path in shards:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    on_disk.update(json.loads(tar.extractfile(m).read())["steps"])
    assert on_disk == set(step_texts.corpus_vocabulary(None))
