"""Model cards: the `README.md` (Hugging Face card: YAML metadata + text) written next to every LoRA export, so the
folder can be pushed to the Hub as it is (`python -m pm_lightning.export --push-to-hub REPO`).

The metadata is huggingface_hub's `ModelCardData` (base_model, license, tags, instance_prompt, widget images); the
text says what each file is, how to load it (diffusers, ComfyUI / kohya tools), the training configuration and the
sample grid of the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pm_lightning.core.atomic import atomic_path
from pm_lightning.core.paths import portable
from pm_lightning.models.lora_names import DOMAIN_FREE
from pm_lightning.models.variants import VARIANTS

LICENSES = {  # base model -> (license, license_name) of the LoRA, which inherits the base's terms
    "black-forest-labs/FLUX.1-dev": ("other", "flux-1-dev-non-commercial-license"),
    "black-forest-labs/FLUX.1-schnell": ("apache-2.0", None),
}
STAGES = {
    "stage1": "stage 1: the whole process sequence as one grid, from a text prompt",
    "stage2": "stage 2: the frames between two reference frames (adaptive steps' insertions)",
    "recraft": "ReCraft: the steps that lead to a finished image",
}


def base_repo(base: str) -> str | None:
    """The Hub id of the base model (variant name or hub id), None for a local directory or the embedded tiny Flux."""
    variant = VARIANTS.get(base)
    source = variant.source if variant is not None else base
    return source if source.count("/") == 1 and not Path(source).exists() else None


def copy_samples(samples: Path | None, folder: Path, name: str = "images/samples.png") -> str | None:
    """Copy the run's sample grid to `folder/name` (atomically); `name`, or None when the run has none."""
    if samples is None or not samples.is_file():
        return None
    with atomic_path(folder / name) as tmp:
        shutil.copyfile(samples, tmp)
    return name


def stage_of(hparams: dict) -> str:
    """stage1, stage2 or recraft, from a checkpoint's hyper-parameters (`stage` is 1 or 2; stage 2's `mode`)."""
    if str(hparams.get("stage")) == "2":
        return "recraft" if hparams.get("mode") == "recraft" else "stage2"
    return "stage1"


def write_model_card(
    folder: str | Path,
    hparams: dict,
    files: dict[str, str],
    step: int | None = None,
    samples: Path | None = None,
    fmt: str = "diffusers",
    card_name: str = "README.md",
    image_name: str = "images/samples.png",
) -> Path:
    """Write `folder/card_name` for the LoRA `files` ({file name: domain}) of a run with `hparams` (the checkpoint's
    hyper-parameters), atomically; returns its path. Local paths appear relative (`core.paths.portable`), never
    absolute. Callers decide what may be replaced (`models/export_files.py`)."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    base = str(hparams.get("base", "unknown"))
    repo = base_repo(base)
    base = base if repo or base in VARIANTS else portable(base)
    license_id, license_name = LICENSES.get(repo or "", ("apache-2.0", None))
    image = copy_samples(samples, folder, image_name)
    stage = stage_of(hparams)
    adapter = dict(hparams.get("adapter") or {})
    domains = list(dict.fromkeys(d for d in files.values() if d not in DOMAIN_FREE))
    data = ModelCardData(
        base_model=repo,
        license=license_id,
        license_name=license_name,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=["lora", "flux", "diffusers", "text-to-image", "procedural-generation", "pm_lightning", stage],
        instance_prompt=", ".join(domains) or None,
        widget=[{"text": "process sequences of " + (", ".join(domains) or "any domain"), "output": {"url": image}}]
        if image
        else None,
    )
    optim = dict(hparams.get("optimizer") or {})
    rows = [
        ("stage", STAGES.get(stage, stage)),
        ("base model", f"`{base}`"),
        (
            "adapter",
            f"{adapter.get('kind', '?')} LoRA, rank {adapter.get('rank', '?')}, alpha {adapter.get('alpha', '?')}",
        ),
        ("domains", ", ".join(hparams.get("domains") or []) or "-"),
        ("optimizer", f"{optim.get('name', '?')}, lr {optim.get('lr', '?')}"),
        ("training steps", str(step) if step is not None else "-"),
        ("seed", str(hparams.get("seed", "-"))),
        ("file format", fmt),
    ]
    if hparams.get("stage1"):
        stage1 = portable(hparams["stage1"])
        rows.append(("trained on stage-1 LoRA", f"`{stage1}` (sha256 {hparams.get('stage1_sha256')})"))
    first = next((n for n in files if not n.endswith(".kohya.safetensors")), next(iter(files), "lora.safetensors"))
    kohya = [n for n in files if n.endswith(".kohya.safetensors")]
    variant = VARIANTS.get(base)
    side = variant.resolution if variant is not None else 1024
    text = "\n".join(
        [
            "---",
            data.to_yaml(),
            "---",
            "",
            f"# pm_lightning LoRA: {STAGES.get(stage, stage).split(':')[0]}",
            "",
            "Procedural sequence generation (ProcessMaker / MakeAnything): a prompt gives the ordered intermediate "
            "states of how a thing is made, as one serpentine grid of 4 or 9 frames. Trained with pm_lightning "
            "on top of the base model above.",
            "",
            *([f"![samples]({image})", ""] if image else []),
            "## Files",
            "",
            "| file | domain |",
            "|---|---|",
            *[
                f"| `{name}` | {domain if domain != 'unseen' else 'unseen (domain-free LoRA, all masks on)'} |"
                for name, domain in files.items()
            ],
            "",
            "## Use",
            "",
            "```python",
            "import torch",
            "from diffusers import FluxPipeline",
            "",
            f'pipe = FluxPipeline.from_pretrained("{repo or base}", torch_dtype=torch.bfloat16).to("cuda")',
            f'pipe.load_lora_weights("<this repo or folder>", weight_name="{first}")',
            f'grid = pipe("<your prompt>", height={side}, width={side}).images[0]  # one serpentine grid of the steps',
            "```",
            "",
            f"ComfyUI, Forge and kohya-based tools: load `{kohya[0]}` (or another `*.kohya.safetensors`) with their "
            "LoRA loader."
            if kohya
            else "ComfyUI, Forge and kohya-based tools: `python -m pm_lightning.export --format kohya` writes files "
            "with the keys they read.",
            "",
            "## Training",
            "",
            "| setting | value |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in rows],
            "",
        ]
    )
    path = folder / card_name
    with atomic_path(path) as tmp:
        ModelCard(text).save(tmp)
    return path
