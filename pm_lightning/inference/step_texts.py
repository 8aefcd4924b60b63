"""Step texts for generated frames, so that the adaptive steps keep Delta_sem when the user gives no `--steps`.

Each frame gets its nearest step caption of the training corpus' step vocabulary by CLIP zero-shot retrieval (the
cosine of the frame's image embedding and each caption's text embedding, the evaluators `generate` already loads:
the embedded tiny CLIP by default). The vocabulary is the distinct step texts of the synthetic training corpus
(`make shards`: `synthetic_corpus.TRAIN_SEED` and `TRAIN_PER_DOMAIN`, the held-out domains left out): the domain's own when the prompt
names a training domain, else every training domain's. Only with the embedded tiny CLIP (`--clip tiny`, the default),
the one trained on that corpus; with another CLIP the user's `--steps` are the only step texts (docs/ADAPTIVE.md,
"Step texts retrieved for generated frames").
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from PIL import Image

from pm_lightning.data.synthetic_corpus import (
    TRAIN_DOMAINS,
    TRAIN_PER_DOMAIN,
    TRAIN_SEED,
    generate_sequence,
    sequence_seed,
)

GIVEN = "given with --steps"
RETRIEVED = "retrieved from the corpus vocabulary"
NONE = "none: Delta_sem dropped"


@lru_cache(maxsize=16)
def corpus_vocabulary(domain: str | None) -> tuple[str, ...]:
    """The distinct step texts of the training corpus' sequences of `domain` (every training domain when `domain`
    is None or not one of them), in first-seen order."""
    domains = [domain] if domain in TRAIN_DOMAINS else list(TRAIN_DOMAINS)
    texts = (t for d in domains for i in range(TRAIN_PER_DOMAIN)
             for t in generate_sequence(d, sequence_seed(TRAIN_SEED, d, i)).steps)  # fmt: skip
    return tuple(dict.fromkeys(texts))


def retrieve(encoders, frames: list[Image.Image], vocabulary: tuple[str, ...]) -> list[str]:
    """Each frame's nearest caption of `vocabulary` (CLIP image-text cosine, top 1)."""
    img = encoders.image_embeddings(frames)  # (F, D), L2-normalised
    txt = encoders.text_embeddings(list(vocabulary))  # (V, D), L2-normalised
    return [vocabulary[i] for i in (img @ txt.T).argmax(-1).tolist()]  # (F, V) -> (F,)


def with_step_texts(models, req, frames: list[Image.Image]):
    """(the request with one step text per frame, where they came from): the user's `--steps`; else, with the tiny
    CLIP, retrieved from the corpus vocabulary; else none (Delta_sem dropped)."""
    if req.steps:
        return req, {"source": GIVEN}
    if req.clip != "tiny":  # the vocabulary is the synthetic corpus', which only the embedded tiny CLIP has seen
        return req, {"source": NONE, "why": f"no step vocabulary for CLIP {req.clip!r}: give --steps"}
    vocabulary = corpus_vocabulary(req.domain)
    steps = retrieve(models.encoders(req.clip, req.dino), frames, vocabulary)
    domains = req.domain if req.domain in TRAIN_DOMAINS else "every training domain"
    info = {"source": RETRIEVED, "clip": req.clip, "vocabulary": len(vocabulary), "vocabulary_of": domains}
    return replace(req, steps=steps), info
