"""core.paths: one place that finds the embedded models and experiment configs."""

from __future__ import annotations

import pytest

from pm_lightning.core import paths
from pm_lightning.models.variants import VARIANTS
from tests.conftest import REPO


def test_the_checkout_is_the_default_home(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # the current directory does not matter for an editable install
    assert paths.project_home() == REPO
    assert paths.tiny_flux_dir() == REPO / "data" / "tiny-flux"
    assert paths.experiment_config("tiny") == REPO / "experiments" / "tiny.yaml"
    assert VARIANTS["tiny"].location() == str(REPO / "data" / "tiny-flux")


def test_the_setting_moves_every_path(monkeypatch, tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "tiny.yaml").write_text("{}")
    monkeypatch.setenv(paths.ENV, str(tmp_path))
    assert paths.tiny_eval_dir() == tmp_path / "data" / "tiny-eval"
    assert VARIANTS["tiny"].location() == str(tmp_path / "data" / "tiny-flux")
    assert paths.experiment_config("tiny") == tmp_path / "experiments" / "tiny.yaml"
    assert paths.project_path("runs/x") == tmp_path / "runs" / "x" and paths.project_path("/abs").as_posix() == "/abs"
    with pytest.raises(paths.ProjectFilesNotFound, match="nope.yaml"):
        paths.experiment_config("nope")


def test_missing_home_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV, str(tmp_path / "missing"))
    with pytest.raises(paths.ProjectFilesNotFound, match="PM_LIGHTNING_HOME"):
        paths.project_home()
    monkeypatch.delenv(paths.ENV)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "_looks_like_home", lambda path: False)  # an installed package, not a checkout
    with pytest.raises(paths.ProjectFilesNotFound, match="set PM_LIGHTNING_HOME"):
        paths.tiny_flux_dir()
