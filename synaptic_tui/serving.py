"""A local OpenAI-compatible server for a model directory: mlx_lm.server on a free loopback port.

Used by the pipeline's `eval` stage with `backend: local`. The server is a
child process of whoever starts it and is stopped when the `with` block ends.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx


class ServerFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlx_server(model_dir: Path, log_path: Path, timeout: float = 300.0) -> Iterator[tuple[str, str]]:
    """Serve `model_dir`; yields (base url ending in /v1, the model id to ask for)."""
    if importlib.util.find_spec("mlx_lm") is None:
        raise ServerFailed("backend local serves the model with mlx_lm.server, which is not installed: "
                           "pip install -c .ci/constraints.txt -e '.[mlx]'")
    model_dir = Path(model_dir).resolve()
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="synaptic-serve-"))
    # mlx_lm.server lists models from the HF cache and answers /v1/models with an empty body
    # when that directory is missing; a private one keeps the user's cache out of it.
    (work / "hub").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(work / "hub"), "HF_HOME": str(work / "hf")}
    url = f"http://127.0.0.1:{port}/v1"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir),
                                    "--host", "127.0.0.1", "--port", str(port)], cwd=work, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                raise ServerFailed(f"mlx_lm.server exited with code {process.returncode}: {tail[0]}")
            try:
                if httpx.get(f"{url}/models", trust_env=False, timeout=2).json().get("data"):
                    break
            except (httpx.HTTPError, ValueError, AttributeError):
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"mlx_lm.server did not answer {url}/models within {timeout:.0f} s (see {log_path})")
            time.sleep(0.3)
        yield url, str(model_dir)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
