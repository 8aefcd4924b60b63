"""Mutation testing of the core modules with mutmut (3.x): each module against the fast tests that cover it.

    python tools/mutation.py                       # every module of tools/mutation_targets.toml (make mutation)
    python tools/mutation.py pm_lightning/training/flow.py --jobs 2
    python tools/mutation.py --report              # the scores of the runs already made, as a markdown table

Each module runs in its own folder, build/mutation/<module>/, where mutmut copies the code into mutants/ and runs
its mutants (the module's [tool.mutmut] section is written there: mutmut reads its settings from the current
folder). For each mutant mutmut runs, with -x, only those of the module's tests that execute the mutated function.
A module with `sample = N` tests N mutants chosen with a fixed seed. Results: build/mutation/<module>/summary.json
(scores and the surviving mutants' diffs), kept between runs; --fresh starts a module over.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ROOT / "tools" / "mutation_targets.toml"
BUILD = ROOT / "build" / "mutation"
LINKED = ("pm_lightning", "tests", "experiments")  # read by the tests; mutmut copies them into mutants/
EMBEDDED = ("tiny-flux", "tiny-eval")  # data/: the embedded tiny models
PYTEST_ARGS = ["-p", "no:cacheprovider", "-m", "not slow and not gpu"]
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
GENERATE = (
    "import mutmut.__main__ as m; from pathlib import Path; Path('mutants').mkdir(exist_ok=True); "
    "m.copy_src_dir(); m.copy_also_copy_files(); m.create_mutants(1)"
)


def targets() -> dict[str, dict]:
    return tomllib.loads(TARGETS.read_text())["modules"]


def folder_of(module: str) -> Path:
    return BUILD / module.removeprefix("pm_lightning/").removesuffix(".py").replace("/", ".")


def prepare(module: str, spec: dict, fresh: bool) -> Path:
    """The module's folder: links to the code, tests and configs, and a pyproject.toml with its mutmut settings."""
    work = folder_of(module)
    if fresh and work.exists():
        shutil.rmtree(work)
    (work / "data").mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        if not (work / name).exists():
            (work / name).symlink_to(ROOT / name)
    for name in EMBEDDED:
        if not (work / "data" / name).exists():
            (work / "data" / name).symlink_to(ROOT / "data" / name)
    settings = {
        "source_paths": ["pm_lightning"],
        "only_mutate": [module],
        "pytest_add_cli_args_test_selection": spec["tests"],
        "pytest_add_cli_args": PYTEST_ARGS,
        "also_copy": ["experiments", "data/tiny-flux", "data/tiny-eval"],
        "use_git_change_detection": False,
    }
    section = "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    (work / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + section)
    return work


def environment() -> dict[str, str]:
    """This environment without PYTHONPATH and PM_LIGHTNING_HOME (the original checkout must not shadow mutants/),
    one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PM_LIGHTNING_HOME")}
    return env | {"OMP_NUM_THREADS": "1", "PM_TEST_THREADS": "1", "WANDB_MODE": "offline"}


def exit_codes(work: Path, module: str) -> dict[str, int | None]:
    meta = work / "mutants" / (module + ".meta")
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.is_file() else {}


def run_module(module: str, spec: dict, jobs: int, fresh: bool, log) -> dict:
    """Generate and run the module's mutants (all, or a seeded sample); its summary."""
    work, mutmut = prepare(module, spec, fresh), str(Path(sys.executable).with_name("mutmut"))
    start = time.monotonic()
    names: list[str] = []
    if spec.get("sample"):
        if not exit_codes(work, module):
            subprocess.run(
                [sys.executable, "-c", GENERATE], cwd=work, env=environment(), check=True, stdout=log, stderr=log
            )
        keys = sorted(exit_codes(work, module))
        names = sorted(random.Random(0).sample(keys, min(spec["sample"], len(keys))))
    done = {k for k, v in exit_codes(work, module).items() if v is not None}  # results of an earlier run are kept
    todo = [n for n in names if n not in done]
    code = 0
    if todo or not names:
        cmd = [mutmut, "run", "--max-children", str(jobs), *todo]
        code = subprocess.run(cmd, cwd=work, env=environment(), stdout=log, stderr=log).returncode
    summary = summarize(work, module, names, time.monotonic() - start, code)
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


SHOW = (
    "import json, sys; from mutmut.mutation.diff_apply import get_diff_for_mutant, find_mutant\n"
    "print(json.dumps({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in sys.argv[1:]}))"
)


def summarize(work: Path, module: str, names: list[str], seconds: float, code: int) -> dict:
    """Counts by status over the tested mutants, and the diff of every one not killed."""
    from mutmut.stats import status_by_exit_code

    codes = exit_codes(work, module)
    chosen = {k: v for k, v in codes.items() if not names or k in names}
    status = {k: status_by_exit_code[v] for k, v in chosen.items()}
    checked = {k: s for k, s in status.items() if s != "not checked"}
    survivors = sorted(k for k, s in checked.items() if s not in KILLED)
    diffs = {}
    if survivors:
        shown = subprocess.run([sys.executable, "-c", SHOW, *survivors], cwd=work, env=environment(),
                               capture_output=True, text=True)  # fmt: skip
        found = json.loads(shown.stdout) if shown.returncode == 0 else {}
        diffs = {n: f"{checked[n]}\n{found.get(n, '')}" for n in survivors}
    killed = sum(s in KILLED for s in checked.values())
    return {"module": module, "mutants": len(codes), "tested": len(checked), "killed": killed,
            "not_checked": len(status) - len(checked), "survivors": diffs, "seconds": round(seconds),
            "mutmut_exit": code}  # fmt: skip


def report() -> str:
    """The runs made so far as a markdown table."""
    rows = ["| module | mutants | tested | killed | survived | score | time |", "|---|---|---|---|---|---|---|"]
    for module in targets():
        path = folder_of(module) / "summary.json"
        if not path.is_file():
            rows.append(f"| {module} | - | not run | | | | |")
            continue
        s = json.loads(path.read_text())
        score = f"{100 * s['killed'] / s['tested']:.0f}%" if s["tested"] else "-"
        rows.append(f"| {module} | {s['mutants']} | {s['tested']} | {s['killed']} | {len(s['survivors'])} | {score} "
                    f"| {s['seconds'] if s['seconds'] is not None else '-'} s |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("modules", nargs="*", help="modules (paths) of tools/mutation_targets.toml; none = all")
    p.add_argument("--jobs", type=int, default=2, help="mutants run at once")
    p.add_argument("--fresh", action="store_true", help="forget earlier results of these modules")
    p.add_argument("--report", action="store_true", help="print the table of the runs made so far and stop")
    args = p.parse_args(argv)
    if args.report:
        print(report())
        return 0
    table = targets()
    unknown = [m for m in args.modules if m not in table]
    if unknown:
        p.error(f"not in {TARGETS.relative_to(ROOT)}: {unknown}; known: {sorted(table)}")
    for module in args.modules or list(table):
        log_path = folder_of(module).parent / f"{folder_of(module).name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log:
            s = run_module(module, table[module], args.jobs, args.fresh, log)
        print(
            f"{module}: {s['killed']}/{s['tested']} killed ({s['mutants']} mutants, {s['seconds']} s; log {log_path})"
        )
        for name, diff in s["survivors"].items():
            print(f"  survived: {name}: {diff.splitlines()[0]}")
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
