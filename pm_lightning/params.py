"""Parameter accounting on the meta device: base transformer vs. trainable adapter parameters per kind.

    python -m pm_lightning.params --variant flux-dev --rank 64 --domains 21
    python -m pm_lightning.params --config experiments/fabric_toys.yaml --config experiments/all_domains.yaml
    python -m pm_lightning.params --json   # {"base": N, "trainable": {"lora": N, "asymmetric": N, "masked": N}, "rank": r, "domains": c}

The transformer is built on ``meta`` (shapes only, no storage) and the real ``add_adapters`` is run
on it, so the count is exactly what training would optimise (tied A and gates counted once, masked
gates included). Which layers are counted, and why: docs/PARAMS.md.
"""

from __future__ import annotations

import json

from pm_lightning.core import validate as v
from pm_lightning.models.variants import VARIANTS


def main(argv: list[str] | None = None) -> None:
    p = v.Parser(prog="python -m pm_lightning.params", description=__doc__.split("\n")[0])
    p.add_argument(
        "--config",
        action="append",
        type=v.existing_file,
        default=[],
        help="LightningCLI YAML (repeatable; merged in order)",
    )
    p.add_argument(
        "--variant", choices=sorted(VARIANTS), help="Flux variant (default flux-dev, or the config's model.base)"
    )
    p.add_argument("--rank", type=v.Rule(int, 1, 4096), help="LoRA rank (default 64, or the config's)")
    p.add_argument(
        "--domains", type=v.Rule(int, 1, 10_000), help="number of domains (default 21, or the config's domain list)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    # after parsing: torch, peft and diffusers' model classes, which --help and a bad flag skip (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.models.adapter_config import AdapterConfig
    from pm_lightning.models.param_count import count_parameters, format_table, read_configs

    variant, adapter, n_domains = read_configs(args.config) if args.config else (None, {}, None)
    adapter.pop("kind", None)
    if args.rank is not None:
        adapter["rank"] = args.rank
    adapter["num_domains"] = args.domains or n_domains or 21
    counts = count_parameters(args.variant or variant or "flux-dev", AdapterConfig.from_dict(adapter))
    print(json.dumps(counts) if args.json else format_table(counts))


if __name__ == "__main__":
    main()
