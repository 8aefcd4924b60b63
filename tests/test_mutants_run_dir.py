"""The run directory's refusals and resume choice on real folder trees, without a fit: the cases the mutation run of
`training/run_dir.py` (docs/TESTING.md, "Mutation testing") found untested. Each test was checked red by hand with
the mutants it names (the mutant's edit applied to the module, the test run and seen failing, the file restored)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from pm_lightning.training.run_dir import (
    RunDirectoryInUse,
    UnreadableCheckpoint,
    check_run_directory,
    resolve_ckpt_path,
)


class NotPlainData:
    """An object torch's weights_only reader refuses to build."""


def checkpoint(path: Path, step: int, mtime_s: float | None = None) -> Path:
    """A small checkpoint torch reads back (tensors and plain data), its mtime set when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.full((2,), float(step))}}, path)
    if mtime_s is not None:
        os.utime(path, (mtime_s, mtime_s))
    return path


def damaged(path: Path, step: int, mtime_s: float | None = None) -> Path:
    """A checkpoint cut in the middle, as a copy killed half way leaves it."""
    data = checkpoint(path, step).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if mtime_s is not None:
        os.utime(path, (mtime_s, mtime_s))
    return path


def test_a_new_run_is_refused_naming_three_checkpoints_and_both_ways_forward(tmp_path):
    """Three checkpoints are named in full; a fourth is shown as "...". The message gives the three ways forward and
    where start over would move the earlier run. Temporary files (dot names) are no earlier run.
    Checked red with run_dir.py mutants `check_run_directory` 17, 19 (" ..." after three) and 9."""
    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / ".last.ckpt.tmp.ckpt").write_bytes(b"a half-written file")
    assert check_run_directory(root, resuming=False, start_over=False) is None
    for step in (1, 2, 3):
        checkpoint(root / "checkpoints" / f"step={step}.ckpt", step)
    with pytest.raises(RunDirectoryInUse) as three:
        check_run_directory(root, resuming=False, start_over=False)
    message = str(three.value)
    shown = "(checkpoints/step=1.ckpt, checkpoints/step=2.ckpt, checkpoints/step=3.ckpt)"
    assert message.startswith(f"run directory {root} already holds another run's checkpoints {shown}.\n")
    assert "resume it:      add --ckpt_path last\n" in message
    assert f"outputs move to {root.resolve().with_name('run.prev-<time>')}, not deleted" in message
    assert message.endswith("or run elsewhere: --trainer.default_root_dir DIR")
    checkpoint(root / "checkpoints" / "step=4.ckpt", 4)
    with pytest.raises(RunDirectoryInUse) as four:
        check_run_directory(root, resuming=False, start_over=False)
    assert f"{shown[:-1]} ...)" in str(four.value) and "step=4" not in str(four.value)


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "RANK"])
def test_a_ddp_child_neither_refuses_nor_moves_the_run(tmp_path, monkeypatch, variable):
    """Processes other than the one the user started (LOCAL_RANK or RANK not 0) start after the launcher checked:
    they neither refuse the directory nor move it aside (a second move would hide the launcher's).
    Checked red with `is_launch_process` 6 (LOCAL_RANK not read) and 11 (RANK not read)."""
    root = tmp_path / "run"
    last = checkpoint(root / "checkpoints" / "last.ckpt", 1)
    monkeypatch.setenv(variable, "1")
    assert check_run_directory(root, resuming=False, start_over=False) is None
    assert check_run_directory(root, resuming=False, start_over=True) is None
    assert last.is_file() and not list(tmp_path.glob("run.prev-*"))


def test_start_over_names_the_folder_it_moved_to_by_the_time_it_did(tmp_path, monkeypatch):
    """`<dir>.prev-<YYYYmmdd-HHMMSS>` beside a named run directory; `prev-<time>` inside the working directory when
    the run directory is the working directory.
    Checked red with `aside_path` 8 (`and` for `or`), 12 and `check_run_directory` 35."""
    root = tmp_path / "run"
    checkpoint(root / "checkpoints" / "last.ckpt", 1)
    before = time.time()
    moved = check_run_directory(root, resuming=False, start_over=True)
    stamp = time.mktime(time.strptime(moved.name.removeprefix("run.prev-"), "%Y%m%d-%H%M%S"))
    assert moved.parent == tmp_path.resolve() and before - 1 <= stamp <= time.time()
    checkpoint(root / "checkpoints" / "last.ckpt", 2)
    monkeypatch.chdir(root)
    inside = check_run_directory(Path("."), resuming=False, start_over=True)
    assert inside.parent == root.resolve() and inside.name.startswith("prev-")
    assert torch.load(inside / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_last_resumes_last_ckpt_else_the_newest_intact_one_saying_what_it_skipped(tmp_path):
    """`--ckpt_path last`: last.ckpt when it loads (no notice); without it the newest other checkpoint by mtime (by
    name between equal times), saying why; damaged ones skipped, each named with its problem.
    Checked red with `resolve_ckpt_path` 47 (a notice when last.ckpt resumes), 20 and 32."""
    root = tmp_path / "run"
    folder = root / "checkpoints"
    now = time.time()
    old = checkpoint(folder / "step=1.ckpt", 1, now - 300)
    checkpoint(folder / "sub" / "step=2.ckpt", 2, now - 200)  # any depth
    newest = checkpoint(folder / "step=3.ckpt", 3, now - 100)
    last = checkpoint(folder / "last.ckpt", 3, now - 400)  # oldest by time: still first
    assert resolve_ckpt_path("last", root) == (str(last), [])
    last.unlink()
    path, notices = resolve_ckpt_path("last", root)
    assert path == str(newest)
    assert notices == [f"--ckpt_path last: no last.ckpt (the run stopped while writing it); resuming from {newest}"]
    os.utime(old, (now - 100, now - 100))  # the same time as step=3: the greater name wins
    damaged(folder / "step=4.ckpt", 4, now - 100)
    damaged(folder / "last.ckpt", 4, now)
    path, (notice,) = resolve_ckpt_path("last", root)
    assert path == str(newest) and notice.startswith("--ckpt_path last: last.ckpt cannot be read (")
    assert "; step=4.ckpt cannot be read (" in notice and notice.endswith(f"; resuming from {newest}")


def test_last_with_nothing_intact_is_refused_and_with_nothing_at_all_starts_from_the_beginning(tmp_path):
    """Checked red with `resolve_ckpt_path` 1, 37 (the notice's words) and 38."""
    root = tmp_path / "run"
    assert resolve_ckpt_path(None, root) == (None, [])
    path, (notice,) = resolve_ckpt_path("last", root)
    assert path is None and notice == (
        f"--ckpt_path last: no checkpoint in {root} yet (the run stopped before its first one): "
        "starting from the beginning"
    )
    damaged(root / "checkpoints" / "last.ckpt", 1)
    damaged(root / "checkpoints" / "step=1.ckpt", 1)
    with pytest.raises(UnreadableCheckpoint) as err:
        resolve_ckpt_path("last", root)
    message = str(err.value)
    assert message.startswith(f"--ckpt_path last: no checkpoint of {root} can be read (last.ckpt cannot be read (")
    assert "; step=1.ckpt cannot be read (" in message
    assert message.endswith("): start over with --start_over true (the damaged run is moved aside, not deleted)")


def test_a_named_checkpoint_must_exist_and_load_and_a_refusal_points_to_the_newest_intact_one(tmp_path):
    """A missing file, a cut file, a file holding other objects than tensors: each refused naming it and why; the
    newest intact checkpoint of the run directory is offered when there is one. A folder (a distributed checkpoint)
    is its strategy's to read: passed on unread.
    Checked red with `resolve_ckpt_path` 14, 15 (the hint never / always given), `checkpoint_problem` 14 (the
    refusal's words) and `_newest_intact` 5."""
    root = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=f"^--ckpt_path {tmp_path}/nope.ckpt: no such file$"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), root)
    cut = damaged(tmp_path / "cut.ckpt", 1)
    with pytest.raises(UnreadableCheckpoint) as alone:
        resolve_ckpt_path(str(cut), root)
    assert str(alone.value).startswith(f"--ckpt_path {cut} cannot be read (") and str(alone.value).endswith(")")
    assert "newest intact" not in str(alone.value)
    now = time.time()
    checkpoint(root / "checkpoints" / "step=1.ckpt", 1, now - 200)
    intact = checkpoint(root / "checkpoints" / "step=2.ckpt", 2, now - 100)
    damaged(root / "checkpoints" / "step=3.ckpt", 3, now)
    with pytest.raises(UnreadableCheckpoint) as hinted:
        resolve_ckpt_path(str(cut), root)
    assert str(hinted.value).endswith(
        f"; the newest intact checkpoint of {root} is {intact}: --ckpt_path last resumes it"
    )
    pickled = tmp_path / "object.ckpt"
    torch.save({"global_step": 1, "thing": NotPlainData()}, pickled)
    with pytest.raises(
        UnreadableCheckpoint, match="it holds objects other than tensors and plain data: refused unread"
    ):
        resolve_ckpt_path(str(pickled), root)
    distributed = tmp_path / "step=5.ckpt"
    distributed.mkdir()
    assert resolve_ckpt_path(str(distributed), root) == (str(distributed), [])
    assert resolve_ckpt_path(str(intact), root) == (str(intact), [])


def test_objects_are_refused_unread_even_where_the_environment_turns_torch_s_default_off(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (torch's switch for loading old pickled checkpoints) turns off
    torch.load's weights-only default, not an explicit `weights_only=True`: a checkpoint holding an arbitrary
    object is still refused, never unpickled (running its code).
    Checked red with `checkpoint_problem` 7 (`weights_only=True` left to torch's default)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    pickled = tmp_path / "object.ckpt"
    torch.save({"global_step": 1, "thing": NotPlainData()}, pickled)
    with pytest.raises(UnreadableCheckpoint, match="holds objects other than tensors and plain data"):
        resolve_ckpt_path(str(pickled), tmp_path / "run")


def test_a_damaged_archive_is_named_by_its_error_s_type_and_first_200_characters(tmp_path):
    """An archive without its data.pkl (a checkpoint written part way): torch's error has a 322-character first
    line and more; the refusal gives its type and the start of that line, at most 200 characters.
    Checked red with `checkpoint_problem` 20 (`[:201]`) and 25 (`type(None)`)."""
    import zipfile

    cut = tmp_path / "cut.ckpt"
    with zipfile.ZipFile(cut, "w") as archive:
        archive.writestr("archive/version", "3\n")
    with pytest.raises(RuntimeError) as direct:
        torch.load(cut, map_location="cpu", weights_only=True)
    first = str(direct.value).splitlines()[0]
    assert len(first) > 200
    with pytest.raises(UnreadableCheckpoint) as refused:
        resolve_ckpt_path(str(cut), tmp_path / "run")
    reason = str(refused.value).removeprefix(f"--ckpt_path {cut} cannot be read (RuntimeError: ").removesuffix(")")
    assert reason == first[:200]


def test_dangling_links_under_checkpoints_are_named_and_skipped_not_a_crash(tmp_path):
    """A symlink whose target is gone (last.ckpt linked to a deleted file, or a stale link beside the checkpoints) is
    skipped with its problem named, and the newest intact checkpoint resumes. Checked red: with `p.stat()` back in the
    sort key, resolve_ckpt_path raised FileNotFoundError; with `last.exists()` alone, the gone last.ckpt went unnamed."""
    root = tmp_path / "run"
    folder = root / "checkpoints"
    now = time.time()
    intact = checkpoint(folder / "step=2.ckpt", 2, now - 100)
    (folder / "step=9.ckpt").symlink_to(folder / "gone-9.ckpt")
    (folder / "last.ckpt").symlink_to(folder / "gone-last.ckpt")
    path, (notice,) = resolve_ckpt_path("last", root)
    assert path == str(intact) and notice.startswith("--ckpt_path last: last.ckpt cannot be read (FileNotFoundError")
    assert "step=9.ckpt cannot be read (FileNotFoundError" in notice and notice.endswith(f"resuming from {intact}")
