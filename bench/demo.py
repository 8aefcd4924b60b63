"""Web demo latency in a real browser (`make bench`): the app served on localhost (`python -m pm_lightning.app`, the
tiny model on CPU, the trained tiny LoRA when `make train-stage1` wrote it), headless Chromium typing a prompt and
pressing Generate; the time from the click until the grid image is on the page. The first request after the page
loads, then repeats, with and without adaptive steps. Writes the "Web demo" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _paths import REPO  # bench/ is on sys.path when run as a script; it puts REPO there too
from docs_section import write_section

from tests.test_demo import chromium, free_port  # noqa: E402 - the browser test's launcher

SECTION = "## Web demo"


def serve(port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pm_lightning.app", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    deadline = time.time() + 180
    while "Running on local URL" not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the app did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    return proc


def click_to_grid(driver, adaptive: bool) -> float:
    """Seconds from pressing Generate until a new grid image is on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "adaptive").find_element(By.TAG_NAME, "input")
    if box.is_selected() != adaptive:
        box.click()
    seed = driver.find_element(By.CSS_SELECTOR, "#seed input")
    seed.clear()
    seed.send_keys(str(int(time.time() * 1000) % 100000))  # a new grid each time (the same one is served cached)
    old = [e.get_attribute("src") for e in driver.find_elements(By.CSS_SELECTOR, "#grid img")]
    start = time.perf_counter()
    driver.find_element(By.ID, "generate").click()
    loaded = (
        "const i = document.querySelector('#grid img'); return i && i.complete && i.naturalWidth > 0 ? i.src : null"
    )
    WebDriverWait(driver, 120, poll_frequency=0.02).until(lambda d: d.execute_script(loaded) not in (None, *old))
    return time.perf_counter() - start


def main() -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    port, log = free_port(), Path("/tmp") / f"pm-demo-bench-{os.getpid()}.log"
    t0 = time.perf_counter()
    proc = serve(port, log)
    startup = time.perf_counter() - t0
    driver = chromium()
    try:
        driver.get(f"http://127.0.0.1:{port}")
        box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        box.send_keys("a lego tower of eight red bricks on a green baseplate")
        driver.find_element(By.CSS_SELECTOR, "#demo-settings button, button.label-wrap").click()  # open Settings
        first = click_to_grid(driver, adaptive=False)
        plain = [click_to_grid(driver, adaptive=False) for _ in range(args.repeats)]
        adaptive = [click_to_grid(driver, adaptive=True) for _ in range(args.repeats)]
    finally:
        driver.quit()
        proc.terminate()
    lora = "the trained tiny LoRA" if (REPO / "runs/tiny/lora/final/lego.safetensors").is_file() else "the plain base"
    rows = [
        ("server start (model load + warm-up grid)", startup),
        ("first grid after the page loads (9 frames, 20 steps)", first),
        (f"grid, median of {args.repeats}", statistics.median(plain)),
        (f"grid + adaptive steps, median of {args.repeats}", statistics.median(adaptive)),
    ]
    table = "\n".join(f"| {name} | {sec:.2f} s |" for name, sec in rows)
    section = (
        f"{SECTION}\n\n`python bench/demo.py`: `python -m pm_lightning.app` on localhost (tiny Flux on CPU, {lora}), "
        "headless Chromium (Selenium) typing a prompt and pressing Generate; seconds from the click until the grid "
        f"image is on the page. Target: the first grid within 5 s. {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads 1.\n\n| step | seconds |\n|---|---|\n{table}\n"
    )
    print(section)
    write_section(section)


if __name__ == "__main__":
    main()
