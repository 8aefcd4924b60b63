"""Every shipped real-scale config (`experiments/fabric_toys*.yaml`, `experiments/all_domains.yaml`), merged with each
strategy of `experiments/strategies/`, parses through `fit`'s own CLI and builds its FLUX.1-dev model on the meta
device with its adapter: no download, no weights, no process group. The trainable counts are docs/PARAMS.md's."""

from __future__ import annotations

import re
from functools import cache
from pydoc import locate

import pytest
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy

from pm_lightning.models.adapters import adapter_parameters
from pm_lightning.models.backbone import meta_transformer
from pm_lightning.models.variants import VARIANTS
from pm_lightning.training.cli import ProcessCLI, build_cli
from pm_lightning.training.precision import base_dtype
from tests.conftest import REPO

EXPERIMENTS = sorted(p.name for p in (REPO / "experiments").glob("fabric_toys*.yaml")) + ["all_domains.yaml"]
STRATEGIES = sorted(p.name for p in (REPO / "experiments" / "strategies").glob("*.yaml"))


class MetaCLI(ProcessCLI):
    """`fit`'s CLI up to the instantiated model and strategy: its parse and its strategy checks, without the local
    base, the run directory or the Trainer (no accelerator, no processes)."""

    def before_instantiate_classes(self) -> None:
        self.check_strategy()

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        self.model, self.strategy = self.config_init.model, self.config_init.trainer.strategy


@cache
def doc_counts() -> dict[str, int]:
    """docs/PARAMS.md's FLUX.1-dev table (rank 64, 21 domains): the base and the trainable count of each kind."""
    text = (REPO / "docs" / "PARAMS.md").read_text()
    table = text.split("## FLUX.1-dev, rank 64, 21 domains, default targets\n", 1)[1].split("```")[1]
    counts = {kind: int(n.replace(",", "")) for kind, n in re.findall(r"^(\w+)\s+([\d,]+)\s", table, re.M)}
    counts["base"] = int(re.search(r"base transformer: ([\d,]+) parameters", table).group(1).replace(",", ""))
    return counts


def expected_trainable(kind: str, domains: int) -> int:
    """The doc's count for `domains` domains: the plain LoRA is domain-free; the masked gates are one table per
    domain, so the doc's 21-domain gate count scales by domains / 21."""
    doc = doc_counts()
    if kind == "lora":
        return doc["lora"]
    assert kind == "masked", kind
    gates, rest = divmod(doc["masked"] - doc["lora"], 21)
    assert rest == 0
    return doc["lora"] + gates * domains


def strategy_settings(strategy, keys) -> dict:
    """The instantiated strategy's values of `keys` (DDPStrategy keeps its arguments in `_ddp_kwargs`)."""
    own = strategy._ddp_kwargs if isinstance(strategy, DDPStrategy) else vars(strategy)
    return {key: own[key] for key in keys}


def parse(experiment: str, strategy: str, tmp_path) -> MetaCLI:
    """`fit --config experiments/<experiment> --config experiments/strategies/<strategy>`, parsed and instantiated up
    to its model and strategy. Stage 2 / ReCraft name stage 1's output, which must exist: an empty stand-in here (its
    frozen adapter is not built on meta)."""
    args = ["--config", f"experiments/{experiment}", "--config", f"experiments/strategies/{strategy}"]
    if "stage2" in experiment or "recraft" in experiment:
        (stage1 := tmp_path / "stage1.safetensors").write_bytes(b"")
        args += ["--model.init_args.stage1", str(stage1)]
    return build_cli(args, MetaCLI)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_shipped_config_parses_with_each_strategy_and_builds_on_meta(experiment, tmp_path):
    """Each strategy file resolves to its class and settings and leaves the model's arguments alone (the strategy
    shards or replicates the model `configure_model` builds, it does not change it), so the model is built once."""
    models = []
    assert STRATEGIES, "no experiments/strategies/*.yaml"
    for strategy in STRATEGIES:
        cli = parse(experiment, strategy, tmp_path)
        wanted = yaml.safe_load((REPO / "experiments" / "strategies" / strategy).read_text())["trainer"]["strategy"]
        assert type(cli.strategy) is locate(wanted["class_path"]), strategy
        assert strategy_settings(cli.strategy, wanted["init_args"]) == wanted["init_args"], strategy
        assert base_dtype(cli.config.trainer.precision, cli.strategy, cli.model.dtype_name) == torch.bfloat16
        models.append(cli.model)
    model = models[0]
    assert all(dict(m.hparams) == dict(model.hparams) for m in models) and model.base == "flux-dev"

    transformer = meta_transformer(model.base)
    assert sum(p.numel() for p in transformer.parameters()) == doc_counts()["base"]
    # stage 2 / ReCraft: the frozen stage-1 adapter is read from the file's tensors by diffusers (a real file in
    # tests/test_host_memory.py); the empty stand-in has none, so the meta build adds the trained LoRA only
    model.stage1 = None
    with torch.device("meta"):
        model.add_stage_adapters(transformer)  # what `configure_model` adds on the loaded base
    trainable = adapter_parameters(transformer)
    assert all(p.is_meta and p.requires_grad for p in trainable)
    assert sum(p.numel() for p in trainable) == expected_trainable(model.adapter_cfg.kind, len(model.domains))
    if model.STAGE == 1:  # FLUX.1-dev's alignment blocks, resolved on its 19 + 38 blocks
        assert model.align_cfg.enabled and model.align_layers == list(VARIANTS["flux-dev"].align_layers)
