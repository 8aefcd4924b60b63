"""One owner of the run layout: the names a run writes under its directory are spelled in `core/run_layout.py` only.

The package is read with `ast` (nothing imported); docstrings are prose and left out. A name is flagged where it
makes a path (alone or as a part between slashes: `"*/lora"`): an operand of `/`, an argument of `Path(...)` /
`os.path.join` / `joinpath` / `glob`; the names that mean nothing else (`config.yaml`, `last.ckpt`,
`run.lock`, `checkpoints`, `final`, a `step-` tag) anywhere in code. Checked once to go red: with
`folder = Path(root) / "checkpoints"` put back into `training/run_dir.py` it fails naming that line.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pm_lightning.core import run_layout
from pm_lightning.core.run_layout import FINAL, RUN_OUTPUTS, RunDir, sample_sheet, step_tag
from tests.conftest import REPO

PACKAGE = REPO / "pm_lightning"
OWNER = Path(run_layout.__file__).resolve()
NAMES = {v for k, v in vars(run_layout).items() if k.isupper() and isinstance(v, str)} - {run_layout.SHEET}
# words that are also an adapter kind ("lora"), a JSON key ("samples") or a package ("wandb", "tensorboard")
ALSO_WORDS = {run_layout.LORA, run_layout.SAMPLES, run_layout.WANDB, run_layout.TENSORBOARD}
PATH_CALLS = {"Path", "PurePath", "join", "joinpath", "glob", "rglob", "with_name"}
STEP_PREFIX = step_tag(0).split("0")[0]  # "step-"


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (module, class, function)."""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr):
            if isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str):
                out.add(id(node.body[0].value))
    return out


def strings(node: ast.AST) -> list[ast.Constant]:
    """The string constants of an expression: itself, or the literal parts of an f-string."""
    parts = node.values if isinstance(node, ast.JoinedStr) else [node]
    return [c for c in parts if isinstance(c, ast.Constant) and isinstance(c.value, str)]


def path_operands(node: ast.AST) -> list[ast.Constant]:
    """The strings `node` makes a path of: both sides of `/`, the arguments of Path(...), join, glob..."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return strings(node.left) + strings(node.right)
    if isinstance(node, ast.Call):
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if func in PATH_CALLS:
            return [c for a in node.args for c in strings(a)]
    return []


def spelled(source: str) -> list[tuple[int, str]]:
    """(line, text) of every layout name `source` spells outside docstrings."""
    tree = ast.parse(source)
    skip, found = docstrings(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if node.value in NAMES - ALSO_WORDS or node.value.startswith(STEP_PREFIX):
                found.append((node.lineno, node.value))
        found += [(c.lineno, c.value) for c in path_operands(node) if set(c.value.split("/")) & NAMES]
    return sorted(set(found))


def test_no_module_but_the_owner_spells_a_run_output_name():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() != OWNER and (hits := spelled(path.read_text())):
            offenders[str(path.relative_to(REPO))] = hits
    assert offenders == {}, f"spell these through pm_lightning/core/run_layout.py (RunDir): {offenders}"


def test_the_check_sees_each_way_of_spelling_a_name():
    """The reader flags what a new writer would write, and lets pass what only looks alike."""
    flagged = [
        'root / "checkpoints"',
        'Path(root, "wandb")',
        'os.path.join(root, "lora")',
        'runs.glob("*/lora")',
        'x = "config.yaml"',
        'tag = "final"',
        'tag = f"step-{step:06d}"',
        'run / "samples" / "a.png"',
        'root / f"lora/{tag}"',
    ]
    for line in flagged:
        assert spelled(line), line
    fine = ['kind = "lora"', 'record["samples"]', 'require("wandb")', '"""Writes <run>/lora/final."""',
            'logged[f"samples/{row}"] = 1', 'meta = {"arch": "flux-1-dev/lora"}']  # fmt: skip
    for line in fine:
        assert not spelled(line), line
    assert spelled(OWNER.read_text()), "the owner itself spells them: the reader finds them there"


def test_a_run_directory_names_its_outputs_under_its_root(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.root == tmp_path and run.last_checkpoint.parent == run.checkpoints
    assert run.lora(step_tag(42)) == run.loras / "step-000042" and run.lora_final.name == FINAL
    assert [p.name for p in run.outputs()] == list(RUN_OUTPUTS) and run.lock not in run.outputs()
    assert RunDir.of_checkpoint(run.checkpoints / "step=3.ckpt") == run


def test_the_latest_sample_sheet_is_the_tag_s_else_the_newest(tmp_path):
    run = RunDir(tmp_path)
    assert run.latest_sample_sheet() is None
    run.samples.mkdir()
    for tag in (step_tag(0), step_tag(20)):
        sample_sheet(run.samples, tag).write_bytes(b"png")
    assert run.latest_sample_sheet() == sample_sheet(run.samples, step_tag(20))
    sample_sheet(run.samples, FINAL).write_bytes(b"png")
    assert run.latest_sample_sheet() == sample_sheet(run.samples, FINAL)
    assert run.latest_sample_sheet(step_tag(0)) == sample_sheet(run.samples, step_tag(0))
