"""The local report of an ablation: results.json (rows x seeds x metrics, summaries, contrasts and the evidence of
ablation/evidence.py), RESULTS.md rendered from results.json alone (the tables, which claims of the papers reproduce
in direction and which do not, the figures), a bar chart per metric (charts/<metric>.png) and one picture per row
(pictures/<row>.png)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

from pm_lightning.ablation.charts import bar_chart, row_picture
from pm_lightning.ablation.columns import column, format_value
from pm_lightning.ablation.evidence import document
from pm_lightning.ablation.jobs import eval_dir
from pm_lightning.ablation.plan import Plan
from pm_lightning.core.atomic import atomic_path
from pm_lightning.core.run_layout import RunDir
from pm_lightning.eval.sample_table import find_samples, read_sample


def cell(key: str, summary: dict | None) -> str:
    """ "mean +- sd" (sd only with two seeds or more)."""
    if not summary or summary["mean"] is None:
        return "-"
    text = format_value(key, summary["mean"])
    if summary["sd"] is not None and column(key).fmt != "count":
        text += f" ± {format_value(key, summary['sd']).rstrip('%')}" + ("%" if column(key).fmt.endswith("%") else "")
    return text


def markdown_table(results: dict, rows: list[str], columns: list[str]) -> str:
    """Rows x columns of "mean ± sd"; a column no row has a value for (e.g. the judge's without an endpoint) is left out."""
    rows = [r for r in rows if r in results["rows"]]
    columns = [
        c for c in columns if any(results["rows"][r]["summary"].get(c, {}).get("mean") is not None for r in rows)
    ]
    head = "| row | seeds | " + " | ".join(column(c).header for c in columns) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(columns)]
    for row in rows:
        r = results["rows"][row]
        lines.append(f"| {r['label']} | {len(r['seeds'])} | " + " | ".join(cell(c, r["summary"].get(c)) for c in columns) + " |")  # fmt: skip
    return "\n".join(lines)


def domains_of(results: dict, prefix: str = "align") -> list[str]:
    found = {k.split("/", 1)[1] for r in results["rows"].values() for k in r["summary"] if k.startswith(prefix + "/")}
    return sorted(found)


def p_text(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def contrast_table(results: dict) -> str:
    """One line per contrast: the paper's numbers, the paired difference, its interval, p, Holm's p and the verdict;
    the rows' seed sds and the old unpaired "beyond the seed spread" flag as information only."""
    lines = ["| contrast | metric | the paper | a − b (mean over seeds) | 95% t interval | seeds | p (paired t) | "
             "Holm p (family, m) | verdict | sd a / sd b | beyond the seed spread (informative) |",
             "|---|---|---|---:|---|---:|---:|---:|---|---|---|"]  # fmt: skip
    for c in results["contrasts"]:
        mean = "-" if c["mean"] is None else f"{c['mean']:+.4g}"
        ci = "- (one seed)" if c["low"] is None else f"[{c['low']:+.4g}, {c['high']:+.4g}]"
        sds = " / ".join("-" if v is None else f"{v:.3g}" for v in (c["sd_a"], c["sd_b"]))
        beyond = {True: "yes", False: "no", None: "-"}[c["beyond_spread"]]
        holm = f"{p_text(c['p_holm'])} ({c['family']}, {c['holm_m']})"
        paper = "; ".join(x for x in (c["claim"], c["paper"]) if x)
        lines.append(f"| {c['name']} | {c['header']} (paper: {c['better']} for a) | {paper} | {mean} | {ci} | {c['n']} "
                     f"| {p_text(c['p'])} | {holm} | **{c['verdict']}** | {sds} | {beyond} |")  # fmt: skip
    return "\n".join(lines)


GROUPS = (
    ("reproduced", "Reproduced: the paper's direction, Holm-adjusted paired p < 0.05"),
    ("not resolved (the paper's direction)", "The paper's direction, not resolved (Holm-adjusted p >= 0.05)"),
    ("does not reproduce (opposite, resolved)", "Does not reproduce: opposite direction, Holm-adjusted p < 0.05"),
    ("not resolved (opposite direction)", "Opposite direction, not resolved (Holm-adjusted p >= 0.05)"),
    ("none", "No difference, one seed only, or no data"),
)


def claim_group(c: dict) -> str:
    """Which of GROUPS a contrast falls in: its verdict (paired t test, Holm-adjusted), nothing else."""
    return c["verdict"] if c["verdict"] in dict(GROUPS) else "none"


def claim_lines(results: dict) -> list[str]:
    """The contrasts grouped by their verdicts, one sentence each with its figures and the paper's."""
    out = []
    for key, title in GROUPS:
        mine = [c for c in results["contrasts"] if claim_group(c) == key]
        if not mine:
            continue
        out += [f"**{title}**", ""]
        for c in mine:
            if c["mean"] is None:
                out.append(f"- {c['name']}: no data.")
                continue
            fig = f"{c['header']} {c['mean']:+.4g}"
            if c["low"] is not None:
                fig += f", 95% CI [{c['low']:+.4g}, {c['high']:+.4g}] over {c['n']} seeds"
                fig += f", p {p_text(c['p'])}, Holm p {p_text(c['p_holm'])} (m = {c['holm_m']}, {c['family']})"
            paper = f"; the paper: {c['paper']}" if c["paper"] else ""
            out.append(f"- {c['name']} ({c['claim']}{paper}): {c['verdict']} ({fig}).")
        out.append("")
    return out


def chart_metrics(plan: Plan) -> list[str]:
    keys = [k for t in plan.tables for k in t.columns if not k.startswith("params_")]
    return list(dict.fromkeys(keys))


def final_sequences(samples: Path) -> list[tuple[str, Image.Image]]:
    """(caption, picture) of each sample folder, sorted: the stage-1 grid, or where the adaptive steps edited the
    sample its final frames (every one, `Sample.scored_grids`' square grid) captioned with the edit counts. A folder
    that cannot be read is named on stderr and left out."""
    pictures = []
    for folder in find_samples(samples) if samples.is_dir() else []:
        try:
            sample = read_sample(folder)
        except ValueError as err:
            print(f"warning: {err}; left out of the picture", file=sys.stderr)
            continue
        edits = f" +{sample.inserted} -{sample.deleted}" if sample.edited else ""
        pictures.append((f"{folder.name}{edits}", sample.scored_grids()[1]))
    return pictures


def write_figures(plan: Plan, out: Path, results: dict) -> tuple[dict[str, Path], dict[str, Path]]:
    """charts/<metric>.png and pictures/<row>.png; returns both maps."""
    charts, pictures = {}, {}
    for metric in chart_metrics(plan):
        bars = [(r["label"], r["summary"].get(metric, {}).get("mean"), r["summary"].get(metric, {}).get("sd"))
                for r in results["rows"].values() if metric in r["summary"]]  # fmt: skip
        if bars:
            path = out / "charts" / f"{metric.replace('/', '_')}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            bar_chart(metric, bars).save(path)
            charts[metric] = path
    seed = plan.seeds[0]
    for row in plan.active_rows:
        grids = final_sequences(RunDir(eval_dir(out, row, seed)).samples)
        if grids:
            path = out / "pictures" / f"{row}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            row_picture(f"{results['rows'][row]['label']} (seed {seed})", grids).save(path)
            pictures[row] = path
    return charts, pictures


def gate_table(results: dict) -> str:
    """Each masked row's domain gates per seed (results.json `gates`): count (kind), mean, min, max, the fraction
    near 0."""
    lines = ["| row | training | seed | gates | mean | min | max | near 0 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row, g in results["gates"].items():
        for seed, s in g["seeds"].items():
            if "error" in s:
                lines.append(f"| {results['rows'][row]['label']} | {g['training']} | {seed} | {s['error']} | | | | |")
                continue
            lines.append(f"| {results['rows'][row]['label']} | {g['training']} | {seed} | {s['n']} ({s['gates']}) | "
                         f"{s['mean']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {s['near_zero']:.1%} |")  # fmt: skip
    return "\n".join(lines)


def render(results: dict) -> str:
    """RESULTS.md, from results.json alone (ablation/evidence.document)."""
    parts = [f"# Ablation `{results['ablation']}`", ""]
    if results["quick"]:
        parts += ["> **Quick run** (`--quick`: a few training steps, one seed). It checks that the harness runs end "
                  "to end; its figures say nothing about the methods.", ""]  # fmt: skip
    parts += [f"Command: `{results['command']}`. Plan: `{results['plan_path']}`. Seeds: {results['seeds']}. "
              f"Written {results['written']}. Every value behind the tables: `results.json` (`values`; in docs/: "
              "docs/ablation/results.json).",
              "Cells are mean ± sample sd over seeds. Align and the proxies are defined in docs/EVALUATION.md; "
              "`(held out)` columns average the held-out domains, the others the training domains.", ""]  # fmt: skip
    for t in results["plan"]["tables"]:
        parts += [f"## {t['title']}", "", markdown_table(results, t["rows"], t["columns"]), ""]
        if t["note"]:
            parts += [t["note"], ""]
    domains = domains_of(results)
    if domains:
        parts += [
            "## Align per domain",
            "",
            markdown_table(results, results["active_rows"], [f"align/{d}" for d in domains]),
            "",
        ]
    if results["gates"]:
        below = {s.get("near_zero_below") for g in results["gates"].values() for s in g["seeds"].values()} - {None}
        parts += ["## Domain gates of the masked rows", "",
                  "The per-domain gates of the row's final stage-1 adapter (its training's last checkpoint; sigmoid "
                  f"gates as the sigmoid of their parameters, a tied gate once); near 0: |gate| < {min(below, default='-')}.", "",
                  gate_table(results), ""]  # fmt: skip
    parts += ["## Paired comparisons", "",
              "a − b per seed (both rows share the seed's training noise and sampler seeds), its mean, 95% Student-t "
              "interval and two-sided paired t-test p; the verdict is the Holm-adjusted p (Holm-Bonferroni within each "
              "family of contrasts, m tests) against 0.05. *Beyond the seed spread* (|mean difference| > the larger "
              "per-row sd) is an unpaired comparison, shown for information only: it decides nothing.", "",
              contrast_table(results), "", "## Which claims reproduce", "", *claim_lines(results), ""]  # fmt: skip
    if results["missing"]:
        parts += [
            "## Missing",
            "",
            "Not finished (rerun the same command to resume): " + ", ".join(results["missing"]),
            "",
        ]
    if results["charts"]:
        parts += ["## Figures", ""] + [f"![{column(m).header}]({p})" for m, p in results["charts"].items()] + [""]
    if results["pictures"]:
        parts += ["## Samples (same prompts and sampler seeds in every row)", ""]
        parts += [f"![{row}]({p})" for row, p in results["pictures"].items()] + [""]
    return "\n".join(parts)


def write_report(plan: Plan, out: Path, results: dict, command: str) -> tuple[Path, Path, dict, dict]:
    """results.json (ablation/evidence.document), RESULTS.md rendered from what results.json holds, charts/,
    pictures/ in `out`; returns (md, json, charts, pictures)."""
    out = Path(out)
    charts, pictures = write_figures(plan, out, results)
    json_path, md_path = out / "results.json", out / "RESULTS.md"
    text = json.dumps(document(plan, out, results, command, charts, pictures), indent=1) + "\n"
    with atomic_path(json_path) as tmp:
        tmp.write_text(text)
    with atomic_path(md_path) as tmp:
        tmp.write_text(render(json.loads(text)))
    return md_path, json_path, charts, pictures
