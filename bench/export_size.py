"""Disk per checkpoint at FLUX.1-dev, masked LoRA rank 64, 21 domains (experiments/all_domains.yaml): LoRA exports
before (fp32, every domain with every checkpoint) and after (bf16, every domain at the export's own interval).

    .venv/bin/python bench/export_size.py [--out DIR] [--threads 1] [--write-docs]

FLUX.1-dev's transformer is built on the meta device from the config the project ships (`models/variants.py`), with
all_domains.yaml's adapter; only the adapters get storage (random values), as `python -m pm_lightning.export` does.
Written for real, then deleted: the checkpoint's tensors (the trainable state dict and the CAME state after one step,
`torch.save`; Lightning's few other entries, loops and hyper-parameters, are left out) and the LoRA files of two domains
and `unseen` in fp32 and in bf16 (`export_domain_lora`, what `LoraExport` calls). A whole export (21 domains +
`unseen`) is one file's size times 22: every file holds the same tensor shapes, and the three written per dtype are
checked to be the same size. Intervals and run length come from all_domains.yaml.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import _paths  # noqa: F401 - bench/ is on sys.path as a script; this puts the repository there too
import torch
import yaml
from _paths import REPO
from docs_section import write_section

from pm_lightning.models.adapter_config import AdapterConfig  # noqa: E402
from pm_lightning.models.adapters import adapter_parameters, add_adapters, materialize_adapters  # noqa: E402
from pm_lightning.models.backbone import meta_transformer  # noqa: E402
from pm_lightning.models.lora_files import export_domain_lora  # noqa: E402
from pm_lightning.models.lora_names import export_names  # noqa: E402
from pm_lightning.training.optim import OptimizerConfig, build_optimizer  # noqa: E402

SECTION = "## LoRA export size"
COMMAND = ".venv/bin/python bench/export_size.py --write-docs"
CONFIG = REPO / "experiments" / "all_domains.yaml"
BASE = "flux-dev"
GB = 1e9


def run_plan() -> dict:
    """all_domains.yaml's domains, adapter, run length, checkpoint and export intervals."""
    cfg = yaml.safe_load(CONFIG.read_text())
    parent = yaml.safe_load((CONFIG.parent / cfg["extends"]).read_text())  # fabric_toys.yaml: the adapter
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c.get("init_args", {}) for c in cfg["trainer"]["callbacks"]}
    return {
        "domains": cfg["data"]["domains"],
        "adapter": parent["model"]["init_args"]["adapter"],
        "max_steps": cfg["trainer"]["max_steps"],
        "checkpoint_every": callbacks["RunCheckpoint"]["every_n_train_steps"],
        "export_every": callbacks["LoraExport"]["every_n_train_steps"],
    }


def flux_dev_adapters(adapter: dict, domains: int) -> torch.nn.Module:
    """FLUX.1-dev's transformer on meta, with real CPU adapters holding random values."""
    transformer = meta_transformer(BASE)
    with torch.device("meta"):
        add_adapters(transformer, AdapterConfig(num_domains=domains, **adapter))
    materialize_adapters(transformer, "cpu")
    with torch.no_grad():
        for p in adapter_parameters(transformer):
            p.normal_(std=0.02)
    return transformer


def checkpoint_bytes(transformer: torch.nn.Module, out: Path) -> tuple[int, int]:
    """(bytes of a checkpoint's tensors, number of trainable tensors): the trainable state dict and the CAME state
    after one step with random gradients, written with torch.save."""
    params = adapter_parameters(transformer)
    names = {id(p): n for n, p in transformer.named_parameters(remove_duplicate=False) if not p.is_meta}
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = build_optimizer(params, OptimizerConfig(name="came"))
    opt.step()
    state = {f"backbone.transformer.{names[id(p)]}": p.detach() for p in params}
    path = out / "last.ckpt"
    torch.save({"state_dict": state, "optimizer_states": [opt.state_dict()]}, path)
    size = path.stat().st_size
    path.unlink()
    return size, len(params)


def export_bytes(transformer: torch.nn.Module, names: dict[str, int], dtype: torch.dtype, out: Path) -> int:
    """One export file's bytes in `dtype`, from three written files (two domains and `unseen`) of equal size."""
    picked = [*list(names.items())[:2], ("unseen", names["unseen"])]
    sizes = {export_domain_lora(transformer, i, out / f"{n}.safetensors", dtype).stat().st_size for n, i in picked}
    for n, _ in picked:
        (out / f"{n}.safetensors").unlink()
    if len(sizes) != 1:
        raise RuntimeError(f"export files of one dtype differ in size: {sorted(sizes)}")
    return sizes.pop()


def measure(out: Path) -> dict:
    plan = run_plan()
    transformer = flux_dev_adapters(plan["adapter"], len(plan["domains"]))
    names = export_names(plan["adapter"]["kind"], plan["domains"])
    fp32 = export_bytes(transformer, names, torch.float32, out)
    bf16 = export_bytes(transformer, names, torch.bfloat16, out)
    ckpt, tensors = checkpoint_bytes(transformer, out)
    return {**plan, "files": len(names), "fp32": fp32, "bf16": bf16, "ckpt": ckpt, "tensors": tensors}


def table(m: dict) -> str:
    n, checkpoints = m["files"], m["max_steps"] // m["checkpoint_every"]
    exports_after = (m["max_steps"] - 1) // m["export_every"] + 1  # + final (none at the last step: final is it)
    before_each, after_export = m["ckpt"] + n * m["fp32"], m["ckpt"] + n * m["bf16"]
    before_run = checkpoints * before_each + n * m["fp32"]  # + the final export
    after_run = checkpoints * m["ckpt"] + exports_after * n * m["bf16"]
    rows = [
        ("one LoRA file, fp32 (written)", m["fp32"]),
        ("one LoRA file, bf16 (written)", m["bf16"]),
        (f"checkpoint: {m['tensors']} trainable tensors + CAME state (written)", m["ckpt"]),
        (f"before, every checkpoint: checkpoint + {n} fp32 files", before_each),
        ("after, a checkpoint: the checkpoint alone", m["ckpt"]),
        (f"after, a checkpoint at an export step: checkpoint + {n} bf16 files", after_export),
        (f"before, the whole run ({checkpoints} checkpoints, all with exports, + final)", before_run),
        (f"after, the whole run ({checkpoints} checkpoints, {exports_after} bf16 exports incl. final)", after_run),
    ]
    lines = ["| what | GB |", "|---|---|", *(f"| {what} | {size / GB:.2f} |" for what, size in rows)]
    return "\n".join(lines) + (
        f"\n\nFLUX.1-dev (meta device, `models/variants.py`'s config), {m['adapter']['kind']} LoRA rank "
        f"{m['adapter']['rank']}, {len(m['domains'])} domains "
        f"+ `unseen` = {n} files per export; {m['max_steps']} steps, checkpoints every {m['checkpoint_every']}, "
        f"exports every {m['export_every']} (experiments/all_domains.yaml). Written: 3 files per dtype (equal sizes) "
        f"and one checkpoint; the per-export figures are one file x {n}. Checkpoints held the trainable tensors "
        "only before this change too (`training/base.py`'s `on_save_checkpoint`; tests/test_lean_exports.py). "
        f"Per checkpoint: {before_each / GB:.2f} GB before, {m['ckpt'] / GB:.2f} GB after "
        f"({before_each / m['ckpt']:.1f}x less; {after_export / GB:.2f} GB at an export step); the whole run "
        f"{before_run / after_run:.1f}x less."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="scratch folder for the written files (default: a temporary one)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="pm-export-size-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        text = table(measure(out))
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(text)
    if args.write_docs:
        write_section(f"{SECTION}\n\nCommand: `{COMMAND}` (part of `make bench`).\n\n{text}\n")


if __name__ == "__main__":
    main()
