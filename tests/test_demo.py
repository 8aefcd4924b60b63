"""The web demo: its requests (fast), and the running server through gradio_client and a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from pm_lightning.core.errors import BadInput
from pm_lightning.demo.backend import PLAIN, DemoBackend, delta_rows, lora_folders, stage1_file
from tests.test_stage2 import stage1_file as stage1_lora  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, stage1_lora):  # noqa: F811
    """A runs folder with one stage-1 export (`<run>/lora/final/unseen.safetensors`), first in the LoRA list; with
    PM_DEMO_RUNS (`make demo-screenshots`) the real runs' folders follow it."""
    root = tmp_path_factory.mktemp("runs")
    if os.environ.get("PM_DEMO_RUNS"):  # the trained tiny LoRA first, for the screenshots
        for run in Path(os.environ["PM_DEMO_RUNS"]).glob("*/lora"):
            shutil.copytree(run.parent / "lora", root / f"0-{run.parent.name}" / "lora")
    final = root / "r1" / "lora" / "final"
    final.mkdir(parents=True)
    shutil.copyfile(stage1_lora, final / "unseen.safetensors")
    (root / "r1" / "lora" / "step-000010").mkdir()  # no files: not offered
    (root / "s2" / "lora" / "final").mkdir(parents=True)  # a stage-2 run: not offered
    shutil.copyfile(stage1_lora, root / "s2" / "lora" / "final" / "lora.safetensors")
    (root / "s2" / "config.yaml").write_text("model:\n  class_path: pm_lightning.training.stage2.Stage2Module\n")
    return root


@pytest.fixture(scope="module")
def backend(tiny_base, runs, tmp_path_factory):
    return DemoBackend(tiny_base, runs, tmp_path_factory.mktemp("demo-out"))


def test_lora_folders_and_files(runs, tmp_path):
    assert lora_folders(runs) == ["r1/lora/final"]  # named under the runs folder: no server path on the page
    folder = lora_folders(runs)[0]
    assert stage1_file(runs, folder, "lego") == runs / folder / "unseen.safetensors"  # no lego file: domain-free
    assert stage1_file(runs, PLAIN, "lego") is None
    for foreign in (str(tmp_path), str(runs / folder), "../x", "s2/lora/final"):  # a request names offered ones only
        with pytest.raises(BadInput, match="no LoRA folder"):
            stage1_file(runs, foreign, "lego")


def test_each_request_deletes_the_folders_of_the_earlier_ones(backend, runs):
    first = backend.text_to_steps("a lego tower", "lego", "4", 1, 2, False, PLAIN, resolution=64)
    assert first.grid.is_file()
    second = backend.text_to_steps("a lego tower", "lego", "4", 2, 2, False, PLAIN, resolution=64)
    assert not first.folder.exists() and second.grid.is_file()
    assert [p.name for p in backend.out_root.iterdir()] == [second.folder.name]


def test_errors_on_the_page_are_one_friendly_line(backend, caplog):
    import gradio as gr

    from pm_lightning.demo.page import guarded

    with pytest.raises(gr.Error) as err:
        guarded(backend.text_to_steps, "a tower", "lego", "4", -1, 2, False, PLAIN)
    assert "--seed: must be an integer from 0" in err.value.message and "\n" not in err.value.message

    def broken(*args, progress=None):
        raise RuntimeError(f"CUDA out of memory in {backend.out_root}/x")

    with pytest.raises(gr.Error) as err:
        guarded(broken)
    assert "Something went wrong on the server (reference " in err.value.message
    assert str(backend.out_root) not in err.value.message and "CUDA" not in err.value.message
    assert "CUDA out of memory" in caplog.text  # the details: in the server log


def test_serving_beyond_this_machine_needs_a_login(monkeypatch, capsys, tiny_base, runs):
    from pm_lightning import app

    monkeypatch.delenv("PM_DEMO_AUTH", raising=False)
    with pytest.raises(SystemExit) as err:
        app.main(["--host", "0.0.0.0", "--runs", str(runs), "--base", tiny_base, "--no-warm-up"])
    assert err.value.code == 2 and "give --auth USER:PASSWORD" in capsys.readouterr().err
    launched = {}
    monkeypatch.setattr("pm_lightning.demo.page.launch", lambda backend, host, port, auth: launched.update(auth=auth))
    monkeypatch.setenv("PM_DEMO_AUTH", "me:secret")
    assert app.main(["--host", "0.0.0.0", "--runs", str(runs), "--base", tiny_base, "--no-warm-up"]) == 0
    assert launched["auth"] == ("me", "secret")


def test_text_to_steps_writes_what_generate_writes(backend, runs):
    folder = lora_folders(runs)[0]
    result = backend.text_to_steps("a lego tower", "lego", "4", 1, 2, False, folder, resolution=64)
    assert Image.open(result.grid).size == (64, 64)
    assert [Image.open(p).size for p, _ in result.frames] == [(32, 32)] * 4
    assert Image.open(result.gif).n_frames == 4 and (result.folder / "report.json").is_file()
    assert result.deltas == [] and "4 frames" in result.summary
    pixels = list(Image.open(result.grid).getdata())
    plain = backend.text_to_steps("a lego tower", "lego", "4", 1, 2, False, PLAIN, resolution=64)
    assert list(Image.open(plain.grid).getdata()) != pixels  # the LoRA was used


def test_bad_input_is_a_message(backend, tmp_path):
    with pytest.raises(BadInput, match="type a prompt"):
        backend.text_to_steps("   ", "lego", 4, 0, 2, False, PLAIN)
    fake = tmp_path / "cake.png"
    fake.write_text("not an image at all")
    with pytest.raises(BadInput, match="not a readable image"):
        backend.recraft(str(fake), "a cake", 4, 0, 2, False)
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(11 * 2**20)
    with pytest.raises(BadInput, match="upload an image under 10 MB"):
        backend.recraft(str(huge), "a cake", 4, 0, 2, False)
    with pytest.raises(BadInput, match="upload a finished image"):
        backend.recraft(None, "a cake", 4, 0, 2, False)


def test_delta_rows_mark_what_each_pair_got():
    report = {
        "rounds": [
            {
                "round": 1,
                "pairs": [{"pair": [0, 1], "frames": ["0", "1"], "delta": 0.9}, {"pair": [1, 2], "frames": ["1", "2"], "delta": 0.1}],
                "decisions": [{"action": "insert", "pair": 0, "n": 1, "applied": True}, {"action": "delete", "pair": 1, "frame": 2, "applied": False}],
            }
        ]
    }  # fmt: skip
    rows = delta_rows(report)
    assert [(r["pair"], r["decision"]) for r in rows] == [("1-2", "insert"), ("2-3", "keep")]


# ---------------------------------------------------------------- the running server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_base, runs, tmp_path_factory):
    """`python -m pm_lightning.app` on a free port; yields its URL once it serves, stops it afterwards."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "pm_lightning.app", "--port", str(port), "--runs", str(runs), "--base", tiny_base]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while "Running on local URL" not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the app did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    alive = proc.poll() is None
    proc.terminate()
    proc.wait(timeout=30)
    assert alive, log.read_text()[-3000:]  # bad requests never took the app down
    assert "demo request failed" not in log.read_text(), log.read_text()[-3000:]  # no unexpected error


@pytest.mark.slow
def test_gradio_client_against_the_server(server, runs, tmp_path):
    import json
    import urllib.request

    from gradio_client import Client, handle_file

    config = urllib.request.urlopen(f"{server}/config", timeout=30).read().decode()
    assert "r1/lora/final" in config and str(runs) not in config and str(REPO) not in config  # no server path
    assert all(p not in json.loads(config).get("root", "") for p in (str(runs), str(REPO)))
    client = Client(server, verbose=False)
    folder = "r1/lora/final"
    grid, frames, gif, deltas, summary = client.predict(
        "a lego tower of red bricks", "lego", "9", 0, 8, True, folder, api_name="/text_to_steps"
    )
    assert Image.open(grid).size == (192, 192) and len(frames) >= 2 and Image.open(gif).n_frames == len(frames)
    assert "Adaptive steps" in summary and deltas["data"]  # one Delta per scored pair
    fake = tmp_path / "cake.png"
    fake.write_text("not an image")
    with pytest.raises(Exception, match="not a readable image"):
        client.predict(handle_file(str(fake)), "a cake", "4", 0, 4, False, api_name="/recraft")
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(11 * 2**20)
    with pytest.raises(Exception, match="(?i)exceed|too large|maximum|size"):  # the server refuses it unread
        client.predict(handle_file(str(huge)), "a cake", "4", 0, 4, False, api_name="/recraft")
    grid2 = client.predict("a cake with strawberries", "cake", "4", 1, 4, False, PLAIN, api_name="/text_to_steps")[0]
    assert Image.open(grid2).size == (192, 192)  # the app is still up after the bad requests


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed: `make browser` installs them")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


@pytest.mark.slow
def test_real_browser_generates_a_grid_and_shows_bad_uploads(server, tmp_path, record_property):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("PM_DEMO_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    driver = chromium()
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        box.send_keys("a lego tower of eight red bricks on a green baseplate")
        driver.find_element(By.CSS_SELECTOR, "#adaptive input").click()
        start = time.perf_counter()
        driver.find_element(By.ID, "generate").click()
        shown = "const i = document.querySelector('#grid img'); return i && i.complete ? i.naturalWidth : 0"
        width = wait.until(lambda d: d.execute_script(shown))  # the image element exists and has loaded
        first_grid_s = time.perf_counter() - start
        img = driver.find_element(By.CSS_SELECTOR, "#grid img")
        record_property("first_grid_s", round(first_grid_s, 2))
        print(f"\nfirst grid in the browser: {first_grid_s:.2f} s after the click")
        assert img.get_attribute("src") and width == 192
        wait.until(lambda d: "Adaptive steps" in d.find_element(By.ID, "summary").text)
        time.sleep(1)
        driver.save_screenshot(str(shots / "demo.png"))
        tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "ReCraft" in b.text)
        tab.click()
        fake = tmp_path / "cake.png"
        fake.write_text("not an image")
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#recraft-image input[type=file]"))
        upload.send_keys(str(fake))
        wait.until(lambda d: "cake" in d.find_element(By.ID, "recraft-image").text)  # uploaded: listed by name
        driver.find_element(By.CSS_SELECTOR, "#recraft-prompt textarea").send_keys("a cake")
        driver.find_element(By.ID, "recraft").click()
        wait.until(lambda d: "not a readable image" in d.find_element(By.TAG_NAME, "body").text)
        driver.save_screenshot(str(shots / "demo-bad-upload.png"))
        driver.find_element(By.CSS_SELECTOR, "button[role=tab]").click()  # back: the app still answers
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid img"))
    finally:
        driver.quit()
