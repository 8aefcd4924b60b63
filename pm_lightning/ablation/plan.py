"""The ablation plan: rows, seeds, training lengths, prompts, contrasts and tables, read from one YAML file.

Every key is checked when the file is read; an unknown key, a row that names a missing overlay or row, a contrast
or table that names an unknown row or metric is an error naming the file, the key and what is known. `--quick`
deep-merges the file's own `quick:` section over it; `--rows` / `--seeds` select a subset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pm_lightning.ablation.columns import is_metric
from pm_lightning.core.paths import project_path
from pm_lightning.data.synthetic_corpus import DOMAINS

ADAPTIVE_ROWS = ("full", "without Delta_glob", "without Delta_loc", "without Delta_sem")  # eval/adaptive_truth.ROWS
JUDGE_MODES = ("auto", "on", "off")
INTERNAL = ("source", "quick", "selected")  # Plan fields set by the loader, not by the file


class PlanError(ValueError):
    """The plan file is wrong; the message names the file, the key and the fix."""


@dataclass
class StageSpec:
    """One training stage: LightningCLI configs (stacked `--config`) and extra `--key value` arguments."""

    configs: list[str] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class CorpusPrompts:
    """Prompts from the synthetic corpus: caption, step texts and true frames of never-trained sequences."""

    split_seed: int = 1  # the validation split of `make shards` (never trained on)
    per_domain: int = 2
    held_out_per_domain: int | None = None  # prompts per held-out domain (`eval.held_out`); None: per_domain
    domains: list[str] | None = None  # None: every synthetic domain, held-out ones included
    size: int = 64  # px of the true frames

    def count(self, domain: str, held_out: list[str]) -> int:
        """The number of prompts of `domain`."""
        if domain in held_out and self.held_out_per_domain is not None:
            return self.held_out_per_domain
        return self.per_domain


@dataclass
class TrainCorpus:
    """The synthetic training corpus every training of the plan reads (stage 1 and stage 2) instead of its configs'
    shards: `sizes[d]` sequences of each training domain d (corpus `seed`, `size`-px frames), built once into
    OUT/corpus/train (`ablation/train_corpus.py`); the configs' `data.domains` become its domains. `varied_steps`:
    processes of varying length shown as each domain's 9 or 4 frames (`generate_sequence(..., varied=True)`), so some
    grids are jumpy and some redundant, as the adaptive steps expect."""

    sizes: dict[str, int] = field(default_factory=dict)
    seed: int = 0  # the training split of `make shards`
    size: int = 64
    varied_steps: bool = False  # False: every step one frame, the corpus of `make shards`


@dataclass
class EvalSpec:
    """How every row is evaluated (the same prompts, sampler and evaluators for all)."""

    base: str = "tiny"
    device: str | None = None
    dtype: str | None = None
    num_inference_steps: int | None = None  # None: the variant's sampler default
    guidance: float | None = None
    clip: str = "tiny"
    dino: str = "tiny"
    corpus: CorpusPrompts | None = field(default_factory=CorpusPrompts)
    prompts: list[dict] | None = None  # explicit [{domain, caption, steps?}] (real scale); replaces `corpus`
    held_out: list[str] = field(default_factory=lambda: ["origami", "mosaic"])
    truth_cases: int = 45  # adaptive-steps ground truth: cases per condition, per seed (split 1)
    truth_calibration_cases: int = 120  # cases per condition the adaptive rows are calibrated on (split 2)
    judge: str = "auto"  # auto: scored when OPENAI_API_KEY or OPENAI_BASE_URL is set


@dataclass
class ParamsSpec:
    """The scale of the second parameter column (the paper's: FLUX.1-dev, rank 64, 21 domains)."""

    variant: str = "flux-dev"
    rank: int = 64
    domains: int = 21


@dataclass
class Resources:
    """What one job asks the cluster for (`--launcher slurm`). GPUs: one task per GPU, as Lightning's SLURMEnvironment
    wants (docs/SCALING.md); no GPUs: one task."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2  # also the job's torch threads
    time_min: int = 60
    mem_gb: float | None = None


@dataclass
class ClusterSpec:
    """The cluster resources of the plan's jobs; `ablate --partition/--account/--nodes/--gpus-per-node/--time`
    override them."""

    partition: str | None = None
    account: str | None = None
    train: Resources = field(default_factory=Resources)  # stage-1 and stage-2 fits
    eval: Resources = field(default_factory=Resources)  # one evaluation (row, seed)

    def resources(self, kind: str) -> Resources:
        return self.eval if kind == "eval" else self.train


@dataclass
class RowSpec:
    """One row: what it trains (a stage-1 overlay, or another row's stage 1) and how it is evaluated."""

    label: str = ""
    paper: str = ""  # the table of the paper it stands for
    overlay: str | None = None  # stage-1 row overlay (experiments/ablations/*.yaml); none and no `from`: the base
    from_row: str | None = None  # YAML key `from`: reuse that row's stage-1 training
    stage2: bool = False  # also train stage 2 on the stage-1 domain-free LoRA (per seed)
    adaptive: str | None = None  # adaptive steps at inference: a row of eval/adaptive_truth.ROWS
    args: dict[str, Any] = field(default_factory=dict)  # extra `--key value` for its stage-1 fit (rank, lambda0, ...)
    followup: bool = False  # an investigation: run only when named (`--rows NAME ...` or `--rows all`)

    @property
    def trains_stage1(self) -> bool:
        return self.overlay is not None


@dataclass
class Contrast:
    """A paired comparison a - b over seeds, and the paper's claim about its direction."""

    name: str
    a: str
    b: str
    metric: str
    claim: str = ""  # the claim, worded from the paper's table
    paper: str = ""  # the paper's own numbers for it (e.g. ProcessMaker Table 3's Align and Coh of the two rows)
    better: str = "higher"  # which direction of `metric` the claim expects for a
    family: str = "claims"  # Holm-Bonferroni adjusts the p-values within each family (docs/ABLATIONS.md)


@dataclass
class TableSpec:
    title: str
    rows: list[str]
    columns: list[str]
    note: str = ""


@dataclass
class Plan:
    name: str
    rows: dict[str, RowSpec]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    project: str = "pm_lightning"
    jobs: int = 1
    stage1: StageSpec = field(default_factory=StageSpec)
    stage2: StageSpec = field(default_factory=StageSpec)
    stage2_fuses: str = "unseen"  # the stage-1 file (lora/final/<name>.safetensors) stage 2 trains on
    train_corpus: TrainCorpus | None = None  # None: the trainings read their configs' shards
    eval: EvalSpec = field(default_factory=EvalSpec)
    params: ParamsSpec = field(default_factory=ParamsSpec)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    contrasts: list[Contrast] = field(default_factory=list)
    tables: list[TableSpec] = field(default_factory=list)
    source: str = ""  # the file it was read from
    quick: bool = False
    selected: list[str] | None = None  # --rows (None: every row)

    @property
    def active_rows(self) -> list[str]:
        """The rows this run evaluates, in plan order."""
        return list(self.selected) if self.selected is not None else list(self.rows)

    def stage1_row(self, row: str) -> str | None:
        """The row whose stage-1 training `row` uses (itself, its `from`, or None for the base)."""
        spec = self.rows[row]
        return row if spec.trains_stage1 else spec.from_row

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# ---------------------------------------------------------------- reading


def _build(cls, data: Any, where: str, source: str):
    """A dataclass from a mapping; unknown keys are an error naming them and the known ones."""
    if not isinstance(data, dict):
        raise PlanError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    names = {f.name: f for f in fields(cls)}
    aliases = {"from": "from_row"}
    values = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name not in names or name in INTERNAL:
            known = sorted(n for n in names if n not in INTERNAL and n != "from_row")
            known += ["from"] if "from_row" in names else []
            raise PlanError(f"{source}: unknown key {where}.{key}; known: {', '.join(sorted(known))}")
        values[name] = value
    try:
        return cls(**values)
    except TypeError as err:
        raise PlanError(f"{source}: {where}: {err}") from None


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_plan(data: dict, source: str, quick: bool = False) -> Plan:
    """Validate a plan mapping (the YAML file's content); `quick` merges its `quick:` section first."""
    if not isinstance(data, dict):
        raise PlanError(f"{source}: the plan must be a mapping")
    data = dict(data)
    overlay = data.pop("quick", None) or {}
    if quick:
        if not overlay:
            raise PlanError(f"{source}: --quick needs a `quick:` section in the plan (seeds, steps, prompts)")
        if "quick" in overlay:
            raise PlanError(f"{source}: quick.quick is not allowed")
        data = _deep_merge(data, overlay)
    for key in ("name", "rows"):
        if key not in data:
            raise PlanError(f"{source}: missing key {key}")
    data["rows"] = {str(k): _build(RowSpec, v or {}, f"rows.{k}", source) for k, v in dict(data["rows"]).items()}
    for key, cls in (
        ("stage1", StageSpec),
        ("stage2", StageSpec),
        ("params", ParamsSpec),
        ("train_corpus", TrainCorpus),
    ):
        if data.get(key) is not None:
            data[key] = _build(cls, data[key] or {}, key, source)
    if "eval" in data:
        ev = dict(data["eval"] or {})
        if ev.get("corpus") is not None:
            ev["corpus"] = _build(CorpusPrompts, ev["corpus"], "eval.corpus", source)
        data["eval"] = _build(EvalSpec, ev, "eval", source)
    if "cluster" in data:
        cluster = dict(data["cluster"] or {})
        for kind in ("train", "eval"):
            if kind in cluster:
                cluster[kind] = _build(Resources, cluster[kind] or {}, f"cluster.{kind}", source)
        data["cluster"] = _build(ClusterSpec, cluster, "cluster", source)
    data["contrasts"] = [
        _build(Contrast, c, f"contrasts[{i}]", source) for i, c in enumerate(data.get("contrasts", []))
    ]
    data["tables"] = [_build(TableSpec, t, f"tables[{i}]", source) for i, t in enumerate(data.get("tables", []))]
    plan = _build(Plan, data, "plan", source)
    plan.source, plan.quick = source, quick
    check_plan(plan)
    return plan


def check_plan(plan: Plan) -> None:
    """Cross-references: rows, overlays, contrasts, tables, seeds."""
    src = plan.source
    if not plan.rows:
        raise PlanError(f"{src}: rows is empty")
    if not plan.seeds or len(set(plan.seeds)) != len(plan.seeds) or not all(isinstance(s, int) for s in plan.seeds):
        raise PlanError(f"{src}: seeds must be a list of distinct integers, got {plan.seeds}")
    if plan.jobs < 1:
        raise PlanError(f"{src}: jobs must be >= 1, got {plan.jobs}")
    for kind in ("train", "eval"):
        res = plan.cluster.resources(kind)
        if min(res.nodes, res.cpus_per_task, res.time_min) < 1 or res.gpus_per_node < 0:
            raise PlanError(
                f"{src}: cluster.{kind}: nodes, cpus_per_task and time_min must be >= 1, gpus_per_node >= 0"
            )
    if plan.cluster.eval.nodes != 1:
        raise PlanError(f"{src}: cluster.eval.nodes: an evaluation runs on one node, got {plan.cluster.eval.nodes}")
    for name, row in plan.rows.items():
        if row.args and row.overlay is None:
            raise PlanError(f"{src}: rows.{name}.args: only a row with an overlay trains, so only it takes args")
        if row.overlay is not None and row.from_row is not None:
            raise PlanError(f"{src}: rows.{name}: give `overlay` (train stage 1) or `from` (reuse a row), not both")
        if row.overlay is not None and not project_path(row.overlay).is_file():
            raise PlanError(f"{src}: rows.{name}.overlay: {row.overlay} not found")
        if row.from_row is not None and not (row.from_row in plan.rows and plan.rows[row.from_row].trains_stage1):
            trained = [n for n, r in plan.rows.items() if r.trains_stage1]
            raise PlanError(f"{src}: rows.{name}.from: {row.from_row!r} is no row with an overlay; known: {trained}")
        if row.stage2 and plan.stage1_row(name) is None:
            raise PlanError(f"{src}: rows.{name}: stage2 needs a stage-1 LoRA (`overlay` or `from`)")
        if row.adaptive is not None and (row.adaptive not in ADAPTIVE_ROWS or not row.stage2):
            raise PlanError(
                f"{src}: rows.{name}.adaptive: {row.adaptive!r} needs stage2: true and one of {list(ADAPTIVE_ROWS)}"
            )
    for stage in ("stage1", "stage2"):
        for cfg in getattr(plan, stage).configs:
            if not project_path(cfg).is_file():
                raise PlanError(f"{src}: {stage}.configs: {cfg} not found")
    if any(r.trains_stage1 for r in plan.rows.values()) and not plan.stage1.configs:
        raise PlanError(f"{src}: stage1.configs is empty (e.g. [experiments/tiny.yaml])")
    if any(r.stage2 for r in plan.rows.values()) and not plan.stage2.configs:
        raise PlanError(f"{src}: stage2.configs is empty (e.g. [experiments/tiny_stage2.yaml])")
    if plan.eval.judge not in JUDGE_MODES:
        raise PlanError(f"{src}: eval.judge must be one of {JUDGE_MODES}, got {plan.eval.judge!r}")
    if plan.eval.prompts is None and plan.eval.corpus is None:
        raise PlanError(f"{src}: eval needs `corpus` (synthetic prompts with ground truth) or `prompts`")
    if plan.train_corpus is not None:
        check_train_corpus(plan)
    for i, p in enumerate(plan.eval.prompts or []):
        if not isinstance(p, dict) or not {"domain", "caption"} <= set(p) or set(p) - {"domain", "caption", "steps"}:
            raise PlanError(f"{src}: eval.prompts[{i}] needs domain and caption (and optionally steps), got {p}")
    for i, c in enumerate(plan.contrasts):
        for side in (c.a, c.b):
            if side not in plan.rows:
                raise PlanError(f"{src}: contrasts[{i}] ({c.name}): unknown row {side!r}; known: {list(plan.rows)}")
        if not is_metric(c.metric) or c.better not in ("higher", "lower"):
            raise PlanError(f"{src}: contrasts[{i}] ({c.name}): metric {c.metric!r} / better {c.better!r} unknown")
        if not isinstance(c.family, str) or not c.family:
            raise PlanError(f"{src}: contrasts[{i}] ({c.name}): family must be a name (e.g. claims), got {c.family!r}")
    for i, t in enumerate(plan.tables):
        bad = [r for r in t.rows if r not in plan.rows] + [c for c in t.columns if not is_metric(c)]
        if bad:
            raise PlanError(f"{src}: tables[{i}] ({t.title}): unknown rows or columns {bad}")


def check_train_corpus(plan: Plan) -> None:
    """The training corpus names known synthetic domains with counts >= 1, none of them held out, and every
    evaluated domain is either trained or held out."""
    src, sizes = plan.source, plan.train_corpus.sizes
    if not isinstance(plan.train_corpus.varied_steps, bool):
        raise PlanError(
            f"{src}: train_corpus.varied_steps must be true or false, got {plan.train_corpus.varied_steps!r}"
        )
    if not isinstance(sizes, dict) or not sizes:
        raise PlanError(f"{src}: train_corpus.sizes must map training domains to sequence counts, got {sizes!r}")
    bad = {d: n for d, n in sizes.items() if d not in DOMAINS or not isinstance(n, int) or n < 1}
    if bad:
        raise PlanError(f"{src}: train_corpus.sizes: {bad}: each key one of {list(DOMAINS)}, each count >= 1")
    both = sorted(set(sizes) & set(plan.eval.held_out))
    if both:
        raise PlanError(f"{src}: train_corpus.sizes trains on {both}, which eval.held_out holds out")
    corpus = plan.eval.corpus
    if plan.eval.prompts is None and corpus is not None:
        neither = [d for d in corpus.domains or list(DOMAINS) if d not in sizes and d not in plan.eval.held_out]
        if neither:
            raise PlanError(
                f"{src}: eval.corpus prompts of {neither}, neither in train_corpus.sizes nor in eval.held_out: "
                "list them in one of the two, or leave them out of eval.corpus.domains"
            )


def load_plan(path: str | Path, quick: bool = False) -> Plan:
    """Read and validate a plan file (YAML)."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file {path} not found (the tiny plan: experiments/ablations/plans/tiny.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PlanError(f"{path}: not valid YAML ({err})") from None
    return parse_plan(data, str(path), quick)


def select(plan: Plan, rows: list[str] | None = None, seeds: list[int] | None = None) -> Plan:
    """The plan restricted to `rows` (their trainings still come from the rows they reuse) and `seeds`;
    contrasts and tables keep what they can still show. No `rows`: every row but the follow-ups; `["all"]`: every row."""
    if rows == ["all"]:
        rows = list(plan.rows)
    elif not rows and any(spec.followup for spec in plan.rows.values()):
        rows = [name for name, spec in plan.rows.items() if not spec.followup]
    if rows:
        unknown = [r for r in rows if r not in plan.rows]
        if unknown:
            raise PlanError(f"--rows: unknown {unknown}; the plan {plan.source} has {list(plan.rows)}")
        plan.selected = [n for n in plan.rows if n in rows]
        keep = set(plan.selected)
        plan.contrasts = [c for c in plan.contrasts if c.a in keep and c.b in keep]
        plan.tables = [t for t in (TableSpec(t.title, [r for r in t.rows if r in keep], t.columns, t.note)
                                   for t in plan.tables) if t.rows]  # fmt: skip
    if seeds:
        plan.seeds = list(dict.fromkeys(seeds))
    return plan
