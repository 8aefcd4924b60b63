"""How often the retrieved step text is right: `generate --adaptive` without `--steps` gives each frame its nearest
step caption of the training corpus' vocabulary (`inference/step_texts.py`); here the frames are the true frames of
never-trained sequences (split seed 1, the training domains), so every frame's right text is known.

Columns, per domain: the vocabulary's size, top-1 exact (the retrieved text is the frame's own step text), the same
up to ordinals and counts (words like "fifth", "three" removed: the step's kind and colour), and chance (1 / size).
Two vocabularies: the domain's own (a prompt with `--domain`), and every training domain's (a prompt without).
Prints markdown and writes the "## Step texts retrieved for generated frames" section of docs/ADAPTIVE.md.

    python bench/step_texts.py                   # 20 sequences per domain, the embedded tiny CLIP
"""

from __future__ import annotations

import argparse
import re

import _paths  # noqa: F401  (puts the repository first on sys.path)
from docs_section import write_section

SECTION = "## Step texts retrieved for generated frames"
NUMBERS = re.compile(r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|one|two|three|four|five|six|seven|eight|nine)\b\s*")  # fmt: skip


def kind(text: str) -> str:
    """The step text without its ordinals and counts (and the plural s they bring)."""
    return re.sub(r"s\b", "", NUMBERS.sub("", text))


def score(encoders, seqs, vocabulary) -> tuple[int, int, int]:
    """(frames, exact, same kind) of top-1 retrieval over `vocabulary`."""
    from pm_lightning.inference.step_texts import retrieve

    frames = exact = same = 0
    for seq in seqs:
        got = retrieve(encoders, seq.frames, vocabulary)
        frames += len(got)
        exact += sum(g == t for g, t in zip(got, seq.steps))
        same += sum(kind(g) == kind(t) for g, t in zip(got, seq.steps))
    return frames, exact, same


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-domain", type=int, default=20)
    p.add_argument("--no-doc", dest="doc", action="store_false", help="print only, do not write docs/ADAPTIVE.md")
    args = p.parse_args()
    from pm_lightning.data.synthetic_corpus import TRAIN_DOMAINS, generate_sequence, sequence_seed
    from pm_lightning.inference.step_texts import corpus_vocabulary
    from pm_lightning.models.encoders import Encoders

    encoders = Encoders.load(clip="tiny", dino="tiny", device="cpu")
    everything = corpus_vocabulary(None)
    lines = ["| domain | vocabulary | top-1 exact | same step up to ordinals / counts | chance | "
             "top-1 exact, all domains' vocabulary |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    totals = [0, 0, 0, 0]
    for d in TRAIN_DOMAINS:
        seqs = [generate_sequence(d, sequence_seed(1, d, i)) for i in range(args.per_domain)]
        vocab = corpus_vocabulary(d)
        n, exact, same = score(encoders, seqs, vocab)
        _, exact_all, _ = score(encoders, seqs, everything)
        totals = [a + b for a, b in zip(totals, (n, exact, same, exact_all))]
        lines.append(f"| {d} | {len(vocab)} | {exact / n:.1%} | {same / n:.1%} | {1 / len(vocab):.1%} | {exact_all / n:.1%} |")  # fmt: skip
    n, exact, same, exact_all = totals
    lines.append(f"| **all ({n} frames)** | | **{exact / n:.1%}** | **{same / n:.1%}** | | **{exact_all / n:.1%}** |")
    table = "\n".join(lines)
    section = (
        f"{SECTION}\n\n`python bench/step_texts.py` ({args.per_domain} never-trained sequences per training domain, "
        f"split seed 1, 64-px true frames; the embedded tiny CLIP on CPU). Vocabulary: the distinct "
        f"step texts of the training corpus (`make shards`: seed 0, 200 per domain; {len(everything)} over all "
        f"training domains).\n\n{table}\n"
    )
    print(section)
    if args.doc:
        from _paths import REPO

        write_section(section, REPO / "docs" / "ADAPTIVE.md")


if __name__ == "__main__":
    main()
