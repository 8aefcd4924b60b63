"""README.md works as pasted: every fenced command names an existing make target / variable, pm_lightning command,
flag (checked by the command's own parser; fit's lines parsed by fit itself with --print_config), venv executable
and repository file; what a command reads, another command or a make target writes; a LoRA is loaded on the base it was trained
on; make's training targets resume their own run; the cheap commands really run (slow tier)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pm_lightning import fit
from pm_lightning.models.variants import VARIANTS
from tests.readme_commands import (
    REPO,
    VENV_BIN,
    Command,
    command_parser,
    commands,
    fenced,
    flag_problems,
    make_targets,
    make_variable_used,
    python_strings,
    run_dirs,
    run_of,
    shipped_paths,
)

TEXT = (REPO / "README.md").read_text()
COMMANDS = commands(TEXT)
MAKE = [c for c in COMMANDS if c.argv[0] == "make"]
MODULES = [c for c in COMMANDS if c.module]
FIT = [c for c in MODULES if c.module == "fit"]
STYLE_OUT = "runs/style"  # style_lora's default --out folder (`make style-lora`)
INPUT_FLAGS = ("--ckpt", "--stage1", "--stage2", "--extra-lora", "--samples", "--logdir", "--data.train_shards")
INPUT_FLAGS += ("--model.init_args.latent_cache_dir", "--images")
SHIPPED_DATA = ("data/tiny-flux", "data/tiny-eval")


def ids(cs: list[Command]) -> list[str]:
    return [c.text[:70] for c in cs]


def test_every_command_is_make_a_pm_lightning_command_or_a_venv_executable():
    assert len(COMMANDS) > 30 and MAKE and FIT
    for c in COMMANDS:
        if c.argv[0] == "make" or c.module:
            continue
        assert c.argv[0].startswith(VENV_BIN), f"not runnable as pasted after make setup: {c.text}"
        assert (Path(sys.executable).parent / c.argv[0].removeprefix(VENV_BIN)).is_file(), c.text


def test_make_targets_and_variables_exist():
    targets = make_targets()
    for c in MAKE:
        for word in c.args:
            name, eq, _ = word.partition("=")
            assert make_variable_used(name) if eq else name in targets, f"{c.text}: {word}"


@pytest.mark.parametrize("command", MAKE, ids=ids(MAKE))
def test_make_lines_dry_run(command):
    """`make -n` parses the line and prints the recipe (nothing runs but the `test -f` guards)."""
    proc = subprocess.run(["make", "-n", *command.args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def dry_run(*args: str, cwd: Path = REPO) -> str:
    """What `make -n ARGS` would run, recipe lines continued with a backslash joined."""
    out = subprocess.run(["make", "-n", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout
    return out.replace("\\\n", " ")


def test_make_eval_reads_what_make_generate_writes():
    out = re.search(r"pm_lightning\.generate .*--out (\S+)", dry_run("generate", "DOMAIN=cake")).group(1)
    samples = re.search(r"pm_lightning\.evaluate --samples (\S+)", dry_run("eval")).group(1)
    assert out == f"{samples}/cake"  # evaluate finds sample folders at any depth under --samples


@pytest.mark.parametrize(
    "command", [c for c in MODULES if c.module != "fit"], ids=ids([c for c in MODULES if c.module != "fit"])
)
def test_command_flags_exist(command):
    assert (REPO / "pm_lightning" / f"{command.module}.py").is_file(), command.module
    assert flag_problems(command, command_parser(command.module)) == []


@pytest.mark.parametrize("command", FIT, ids=ids(FIT))
def test_fit_lines_parse(command, capsys):
    """fit's own parser reads the line (unknown flags, bad values and missing configs fail) with --print_config."""
    with pytest.raises(SystemExit) as done:
        fit.main([*command.args, "--print_config"])
    assert done.value.code == 0, capsys.readouterr().err[-2000:]
    assert yaml.safe_load(capsys.readouterr().out)["model"]["class_path"]


def test_shipped_files_exist():
    words = [w for c in COMMANDS for w in c.args] + python_strings(TEXT)
    named = shipped_paths(words) + [v for c in FIT for v in c.values("--config")]
    assert named and [p for p in named if not (REPO / p).exists()] == []


def produced() -> set[str]:
    """What the README's commands and make targets write: run directories, --out folders, style LoRAs."""
    out = set(run_dirs()) | {STYLE_OUT}
    for c in COMMANDS:
        out |= {v.rstrip("/") for f in ("--out", "--trainer.default_root_dir") for v in c.values(f)}
    out |= {re.search(r"--out (\S+)", dry_run("generate")).group(1).rsplit("/", 1)[0]}  # make generate's folder
    return out


def test_what_a_command_reads_another_one_writes():
    """Inputs under runs/, outputs/, hub/ and data/ (not shipped) come from a run, an --out or a make target;
    the rest (my_lego/, ROOT, makeanything/) are the user's own folders, named as such in the text."""
    made = produced()
    for c in COMMANDS:
        for flag in INPUT_FLAGS:
            for value in c.values(flag):
                path = value.rsplit(":", 1)[0] if flag == "--extra-lora" else value.rstrip("/")
                if not path.startswith(("runs/", "outputs/", "hub/", "data/")) or path.startswith(SHIPPED_DATA):
                    continue
                assert any(path == m or path.startswith(m + "/") for m in made), f"{c.text}: nothing writes {path}"


def variant_of(source: str) -> str:
    """The variant name of a `from_pretrained` source or a `--base` value."""
    if source in VARIANTS:
        return source
    if source.rstrip("/") == "data/tiny-flux":
        return "tiny"
    return next(name for name, v in VARIANTS.items() if v.source == source)


def test_loras_load_on_the_base_they_were_trained_on():
    """The tiny run's export loads into the tiny base, a FLUX.1-dev run's into FLUX.1-dev; generate --stage1 too."""
    runs = run_dirs()
    exported = {}
    for c in (c for c in MODULES if c.module == "export"):
        (ckpt,) = c.values("--ckpt")
        exported[c.values("--out")[0].rstrip("/")] = runs[run_of(ckpt, runs)]
    blocks = [body for lang, body in fenced(TEXT) if lang == "python"]
    pairs = [(m, b) for b in blocks for m in [re.search(r'from_pretrained\("([^"]+)"', b)] if m]
    assert len(pairs) >= 2
    for match, body in pairs:
        for folder in re.findall(r'load_lora_weights\("([^"]+)"', body):
            assert exported[folder.rstrip("/")] == variant_of(match.group(1)), (folder, match.group(1))
    for c in (c for c in MODULES if c.module == "generate"):
        for lora in c.values("--stage1"):
            assert runs[run_of(lora, runs)] == variant_of((c.values("--base") or ["tiny"])[0]), c.text


@pytest.fixture()
def make_copy(tmp_path) -> Path:
    """The Makefile with the files its set-up stamp depends on, in an empty folder (its own runs/)."""
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize(("target", "run"), [("train-stage1", "runs/tiny"), ("train-stage2", "runs/tiny_stage2")])
def test_a_training_target_resumes_its_own_run(make_copy, target, run):
    """Red once when the `resume` call was dropped from the recipe (no --ckpt_path in the second case)."""

    def fit_line(*extra: str) -> str:
        lines = dry_run(target, *extra, cwd=make_copy).splitlines()
        return next(line for line in lines if "pm_lightning.fit" in line and run.split("/")[1] in line)

    Path(make_copy, "runs/tiny/lora/final").mkdir(parents=True)
    Path(make_copy, "runs/tiny/lora/final/unseen.safetensors").touch()  # stage 2's guard: stage 1 is done
    assert "--ckpt_path" not in fit_line()  # a first run starts fresh
    Path(make_copy, run, "checkpoints").mkdir(parents=True)
    Path(make_copy, run, "checkpoints", "step=000200.ckpt").touch()
    assert "--ckpt_path last" in fit_line()  # a rerun resumes, also when only a step checkpoint exists
    assert "--ckpt_path" not in fit_line("ARGS=--start_over true")  # starting over moves the run aside instead
    assert fit_line("ARGS=--trainer.max_steps 50").endswith("--ckpt_path last --trainer.max_steps 50")


def test_licence_and_citation():
    assert (REPO / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert re.search(r'^license = "Apache-2.0"', (REPO / "pyproject.toml").read_text(), flags=re.M)
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0"
    titles = [r["title"] for r in cff["references"]]
    papers = REPO.parent / "shared" / "papers"
    if papers.is_dir():  # beside the checkout in CI and on the project's machines
        for name in ("processmaker-summary.txt", "makeanything-summary.txt"):
            first = (papers / name).read_text(encoding="utf-8").splitlines()[0].rstrip("¶").strip()
            assert first in titles


CHEAP = [
    c for c in COMMANDS if "--print_config" in c.argv or "--help" in c.argv or c.module in ("params", "memory_plan")
]


@pytest.mark.slow
@pytest.mark.parametrize("command", CHEAP, ids=ids(CHEAP))
def test_the_cheap_commands_run_as_pasted(command):
    """Run in the checkout as written, `.venv/bin/python` being this interpreter (5-30 s each)."""
    argv = [sys.executable if w == f"{VENV_BIN}python" else w for w in command.argv]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
