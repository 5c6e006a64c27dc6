"""Shared fixtures: tiny models (cached per session), the real SmolLM2 (slow tier),
Debian chromium for the browser tests, and a served app.

No test downloads anything: HF_HUB_OFFLINE is forced on here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*which nnsight already serves.*")

import pytest  # noqa: E402

from tests.missing_inputs import skip_or_fail  # noqa: E402

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@functools.lru_cache(maxsize=None)
def cached_model(name: str):
    """Load a model once per test session (tests must not mutate its weights)."""
    from workbench.engine.registry import load_model

    return load_model(name, device="cpu")


@pytest.fixture(scope="session")
def tiny_llama():
    return cached_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    return cached_model("tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_bert():
    return cached_model("tiny-bert")


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M (fp32, CPU); integration tier."""
    return cached_model("smollm2-135m")


# ----------------------------------------------------------------------------- browser
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Launch Debian's chromium (never a downloaded browser); skip loudly without it, fail under CI."""
    executable = _chromium()
    if executable is None:
        message = ("NO BROWSER: Debian's chromium is not installed, so the browser tests cannot run "
                   "(`make test` installs it when run as root)")
        skip_or_fail(message, warn=True)
    return {**browser_type_launch_args, "executable_path": executable, "args": CHROMIUM_ARGS}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served_app(env: dict, log_path: str):
    """Serve the app on a free port with `env`; yields its base URL, stops it afterwards."""
    from workbench.cli.app import app_command

    port = free_port()
    log = open(log_path.format(port=port), "w")
    process = subprocess.Popen(app_command(port), stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"the app did not start within 120 s; see {log.name}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def app_url():
    """Serve the app (default model) on a free port for the session; yields its base URL."""
    log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "workbench-app-{port}.log")
    with served_app(dict(os.environ), log_path) as url:
        yield url


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the `workbench` CLI in a subprocess (as a user would) and capture its output."""
    return subprocess.run([sys.executable, "-m", "workbench.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))
