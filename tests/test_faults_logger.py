"""Logger trouble: W&B credentials come from wandb's own login state (a self-hosted server included), and a server
that refuses or never answers sends the run offline within the configured time; the run goes on and says so."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
import yaml

from tests.conftest import REPO
from tests.test_fit import small_config

pytestmark = pytest.mark.slow
KEY = "k" * 40


def credentials(tmp_path, **env) -> str:
    code = "from pm_lightning.training.wandb_logger import has_wandb_credentials as h; print(h())"
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_credentials_follow_wandbs_login_state_for_a_self_hosted_server(tmp_path):
    server = {"WANDB_BASE_URL": "http://127.0.0.1:9"}
    assert credentials(tmp_path, **server) == "False"
    (tmp_path / ".netrc").write_text(f"machine 127.0.0.1:9 login user password {KEY}\n")  # host:port, as wandb writes
    os.chmod(tmp_path / ".netrc", 0o600)
    assert credentials(tmp_path, **server) == "True"  # the key `wandb login --host` wrote for that server
    assert credentials(tmp_path, WANDB_BASE_URL="http://127.0.0.1:10") == "False"  # not another server's
    (tmp_path / ".netrc").unlink()
    assert credentials(tmp_path, WANDB_API_KEY=KEY, **server) == "True"


class SilentServer:
    """Accepts connections on loopback and never answers: a server that is up but slow."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.held, self.stop = [], False
        threading.Thread(target=self._accept, daemon=True).start()
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self):
        while not self.stop:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def __exit__(self, *exc):
        self.stop = True
        self.sock.close()
        for conn in self.held:
            conn.close()


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_without_credentials_a_run_goes_offline_by_itself(tmp_path, tiny_base, tiny_shards):
    """What `make train-stage1` does on a fresh machine: no key, no WANDB_MODE in the environment."""
    path = small_config(tmp_path, tiny_base, tiny_shards, max_steps=1, every=100)
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"]["logger"] = {"class_path": "pm_lightning.training.wandb_logger.AutoWandbLogger"}
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pm_lightning.fit", "--config", str(path)],
        cwd=REPO,
        timeout=600,
        env={**env, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(p.name.startswith("offline-run-") for p in (tmp_path / "run" / "wandb").iterdir())


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_unreachable_wandb_falls_back_offline_and_the_run_finishes(tmp_path, tiny_base, tiny_shards, server):
    path = small_config(tmp_path, tiny_base, tiny_shards, max_steps=2, every=100)
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"]["logger"] = {
        "class_path": "pm_lightning.training.wandb_logger.AutoWandbLogger",
        "init_args": {"project": "pm_tests", "init_timeout": 5},
    }
    path.write_text(yaml.safe_dump(cfg))
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}

    def fit(url):
        env = {**base, "HOME": str(tmp_path), "WANDB_API_KEY": KEY, "WANDB_BASE_URL": url, "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [sys.executable, "-m", "pm_lightning.fit", "--config", str(path)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )

    if server == "silent":
        with SilentServer() as url:
            proc = fit(url)
    else:
        proc = fit(closed_port())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "did not start the run" in out and "logging offline instead" in out
    assert any(p.name.startswith("offline-run-") for p in (tmp_path / "run" / "wandb").iterdir())
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
