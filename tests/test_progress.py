"""Progress bars (`core/progress.py`): the long commands show a tqdm bar on stderr; `--no-progress` and tqdm's own
`TQDM_DISABLE=1` switch every bar off, diffusers' sampler bars included."""

from __future__ import annotations

import pytest

from pm_lightning import text_cache
from pm_lightning.core.progress import ENV, pipeline_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


@pytest.fixture(autouse=True)
def bars_on(monkeypatch):
    """Each test starts with bars on; the variable `--no-progress` sets is restored after it."""
    monkeypatch.delenv(ENV, raising=False)


def test_text_cache_shows_a_bar_and_no_progress_hides_it(tiny_base, tmp_path, capsys):
    """The documented command (`--prompts experiments/tiny.yaml --base ... --out ...`): its batch bar on stderr;
    then with `--no-progress` on a fresh cache none. Checked red: without `apply_progress_flag(args)` in
    text_cache.main the second run printed the bar."""
    argv = ["--prompts", "experiments/tiny.yaml", "--base", tiny_base, "--batch-size", "2"]
    assert text_cache.main([*argv, "--out", str(tmp_path / "a")]) == 0
    shown = capsys.readouterr()
    assert "text cache: 100%" in shown.err and "batch" in shown.err
    assert "text cache: " not in shown.out  # tqdm's stream is stderr: stdout keeps only the result line
    assert text_cache.main([*argv, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    hidden = capsys.readouterr()
    assert "text cache: " not in hidden.err and "encoded" in hidden.out


@pytest.mark.parametrize("value", [None, "1"])
def test_diffusers_sampler_bar_follows_the_variable(tiny_base, monkeypatch, value):
    """A stock diffusers pipeline configured by `pipeline_config` shows its step bar unless TQDM_DISABLE is set
    (diffusers passes `disable=` explicitly, which beats tqdm's variable, hence the helper)."""
    from diffusers import FluxPipeline

    if value is not None:
        monkeypatch.setenv(ENV, value)
    pipe = FluxPipeline.from_pretrained(tiny_base)
    pipe.set_progress_bar_config(**pipeline_config("stage 1"))
    bar = pipe.progress_bar(total=3)
    assert bar.disable is (value is not None)
    assert bar.disable or bar.desc.startswith("stage 1")  # a disabled tqdm keeps no desc
    bar.close()
