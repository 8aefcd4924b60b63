"""docs/ADAPTIVE.md's tables from the ground-truth benchmark (`eval/adaptive_truth.py`) and the guard sweep
(`eval/guard_sweep.py`): the markdown, and its blocks between `<!-- adaptive:begin NAME -->` and `<!-- adaptive:end -->`
rewritten in place (`python -m pm_lightning.calibrate_adaptive --write-docs`, `make bench-adaptive`)."""

from __future__ import annotations

import math
from pathlib import Path

from pm_lightning.eval.adaptive_truth import GOALS
from pm_lightning.inference.adaptive_rule import AdaptiveConfig


def markdown_table(result: dict) -> str:
    """The rows x rates table (percent), goals marked."""
    counts = result["cases_per_condition"]
    head = (
        f"| row | untouched edited (n={counts['untouched']}) | removal found (n={counts['one_removed']}) | "
        f"duplicate deleted (n={counts['duplicated']}) | two removed: found per removal (n={counts['two_removed']}) | "
        "damaged: other edits | missing pair has the largest Delta | copy pair has the smallest Delta | k1 | k2 | "
        "add_floor | del_ceiling |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for name, row in result["rows"].items():
        r, c = row["rates"], row["config"]
        cells = [_cell(r, "untouched_edited"), _cell(r, "removal_found"), _cell(r, "duplicate_deleted"),
                 f"{100 * r['two_removed_found']:.1f}%", f"{100 * r['damaged_other_edits']:.1f}%",
                 f"{100 * r['missing_pair_is_largest']:.1f}%", f"{100 * r['copy_pair_is_smallest']:.1f}%"]  # fmt: skip
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {c['k1']} | {c['k2']} | {_guard('add_floor', c['add_floor'])} | "
            f"{_guard('del_ceiling', c['del_ceiling'])} |"
        )
    return "\n".join(lines)


GUARD_OFF = {"add_floor": 0.0, "del_ceiling": math.inf}  # the value of each guard that means "no guard"
MODE_LABEL = {"no_text": "no step texts", "text": "with step texts"}  # the guard sweep's two modes


def _guard(key: str, value: float) -> str:
    """A setting as the tables write it: "none" for a guard that is off, else the number."""
    return "none" if value == GUARD_OFF.get(key) else f"{value:g}"


def grid_choice(result: dict, stored: AdaptiveConfig | None) -> str:
    """One sentence: the full row's settings from the grid against the stored (shipped) ones."""
    c = result["rows"]["full"]["config"]
    keys = ("k1", "k2", "add_floor", "del_ceiling")
    new = ", ".join(f"{k} {_guard(k, c[k])}" for k in keys)
    if stored is None:
        return f"The grid chooses for the full row: {new}."
    old = ", ".join(f"{k} {getattr(stored, k):g}" for k in keys)
    if all(c[k] == getattr(stored, k) for k in keys):
        return f"The grid chooses for the full row the stored settings: {new}."
    return (
        f"What the grid chooses for the full row, not shipped: {new}. Stored in "
        f"`data/tiny-eval/adaptive_calibration.json` (what `generate --adaptive` uses): {old}."
    )


def _cell(rates: dict, key: str) -> str:
    op, goal = GOALS[key]
    ok = rates[key] <= goal if op == "<=" else rates[key] >= goal
    return f"{100 * rates[key]:.1f}% {'ok' if ok else 'missed'} ({op} {100 * goal:.0f}%)"


DOC = Path(__file__).resolve().parents[2] / "docs" / "ADAPTIVE.md"


def replace_marked(text: str, name: str, body: str) -> str:
    """`text` with what lies between `<!-- adaptive:begin NAME -->` and the next `<!-- adaptive:end -->` replaced by
    `body` (the markers stay); a missing or repeated marker is an error naming it."""
    begin, end = f"<!-- adaptive:begin {name} -->", "<!-- adaptive:end -->"
    if text.count(begin) != 1:
        raise ValueError(f"{begin} must occur once in the document, found {text.count(begin)}")
    start = text.index(begin) + len(begin)
    stop = text.find(end, start)
    if stop < 0:
        raise ValueError(f"no {end} after {begin}")
    return text[:start] + "\n" + body.strip("\n") + "\n" + text[stop:]


def write_docs(sections: dict[str, str], doc: Path = DOC) -> None:
    """Replace each named marked block of docs/ADAPTIVE.md (`replace_marked`); the prose around them stays."""
    text = doc.read_text()
    for name, body in sections.items():
        text = replace_marked(text, name, body)
    doc.write_text(text)


def guard_tables(sweep: dict, mode: str = "no_text") -> dict[str, str]:
    """docs/ADAPTIVE.md's guard-sweep blocks from `eval/guard_sweep.sweep_guards`' result: the pair-Delta quantiles
    (both modes), the add_floor and del_ceiling sweeps of `mode` (every 0.1 / 0.05 and the chosen value's
    neighbours; the chosen one bold), and the guards chosen in each mode."""
    quant = []
    for m, label in MODE_LABEL.items():
        quant.append(f"| pair Delta, {label} | p05 | p25 | p50 | p75 | p95 |\n|---|---:|---:|---:|---:|---:|")
        quant += [f"| {cat} | " + " | ".join(f"{v:.3f}" for v in q.values()) + " |"
                  for cat, q in sweep[m]["pair_quantiles"].items()]  # fmt: skip
        quant.append("")
    r = sweep[mode]

    def rows(values: dict, chosen: float, step: float, cells) -> list[str]:
        keys = sorted(float(k) for k in values)
        at = keys.index(float(chosen))
        keep = {k for k in keys if abs(k / step - round(k / step)) < 1e-6} | set(keys[max(at - 1, 0) : at + 2])
        out = []
        for k in sorted(keep):
            x = values[k] if k in values else values[str(k)]
            line = " | ".join(cells(k, x))
            out.append(f"| **{line.replace(' | ', '** | **')}** |" if k == float(chosen) else f"| {line} |")
        return out

    sequences = r["sequences"]
    add = [f"| add_floor ({MODE_LABEL[mode]}) | true sequences edited (n={sequences}) | one missing found | "
           "two missing found |\n|---:|---:|---:|---:|"]  # fmt: skip
    add += rows(r["add_sweep"], r["add_floor"], 0.1,
                lambda k, x: [f"{k:.2f}", f"{x['false_insert']:.3f}", f"{x['gap1']:.3f}", f"{x['gap2']:.3f}"])  # fmt: skip
    dele = [f"| del_ceiling ({MODE_LABEL[mode]}) | true sequences edited (n={sequences}) | repeated frame found |"
            "\n|---:|---:|---:|"]  # fmt: skip
    dele += rows(r["del_sweep"], r["del_ceiling"], 0.05,
                 lambda k, x: [f"{k:.3f}", f"{x['false_delete']:.3f}", f"{x['dup']:.3f}"])  # fmt: skip
    d = AdaptiveConfig()
    chosen = (
        f"The sweep chooses **add_floor = {sweep['no_text']['add_floor']:.2f}, del_ceiling = "
        f"{sweep['no_text']['del_ceiling']:.3f}** without step texts and {sweep['text']['add_floor']:.2f} / "
        f"{sweep['text']['del_ceiling']:.3f} with them; two_frame_ratio's best split of one- and two-frame gaps "
        f"(Delta / insert bar) has balanced error {r['two_frame_ratio_balanced_error']:.2f}. "
        f"`AdaptiveConfig`'s defaults are {d.add_floor} / {d.del_ceiling}"
        + (" (the same)." if (d.add_floor, d.del_ceiling) == (r["add_floor"], r["del_ceiling"]) else
           ", written from an earlier run of this sweep; what it chooses now is not shipped (`generate` with the "
           "tiny evaluators reads the stored calibration instead: Ground truth, below).")
    )  # fmt: skip
    return {"guard-quantiles": "\n".join(quant).strip("\n"), "guard-add": "\n".join(add), "guard-del": "\n".join(dele),
            "guard-chosen": chosen}  # fmt: skip
