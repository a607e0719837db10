"""A local OpenAI-compatible server for the length of a `with` block: mlx_lm.server for a merged model
directory, llama-cpp-python's server for a GGUF file.

Tests and benchmarks use it for a server that is a child of their own process. The app, `synaptic-tui
serve`, evals and the pipeline's `backend: local` go through synaptic_tui.servers instead: detached,
reused, on the fastest engine the machine has.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
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


def _install_hint(module: str) -> str:
    if module == "mlx_lm":
        return "pip install -c .ci/constraints.txt -e '.[mlx]'"
    return ("build llama-cpp-python with its server: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" "
            "pip install 'llama-cpp-python[server]'")


@contextmanager
def _serve(name: str, command: list[str], log_path: Path, timeout: float, *, env: dict[str, str] | None = None,
           cwd: Path | None = None, port: int) -> Iterator[str]:
    """Start an OpenAI-compatible server, wait until it lists a model, yield its /v1 URL, stop it afterwards."""
    url = f"http://127.0.0.1:{port}/v1"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                raise ServerFailed(f"{name} exited with code {process.returncode}: {tail[0]}")
            try:
                if httpx.get(f"{url}/models", trust_env=False, timeout=2).json().get("data"):
                    break
            except (httpx.HTTPError, ValueError, AttributeError):
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"{name} did not answer {url}/models within {timeout:.0f} s (see {log_path})")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def can_serve(module: str) -> bool:
    """Whether `mlx_lm` (merged models) or `llama_cpp.server` (GGUF files) is installed here."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # llama_cpp.server when llama_cpp itself is missing
        return False


@contextmanager
def mlx_server(model_dir: Path, log_path: Path, timeout: float = 300.0) -> Iterator[tuple[str, str]]:
    """Serve a Hugging Face model directory; yields (base url ending in /v1, the model id to ask for)."""
    if not can_serve("mlx_lm"):
        raise ServerFailed("backend local serves merged models with mlx_lm.server, which is not installed: "
                           + _install_hint("mlx_lm"))
    model_dir = Path(model_dir).resolve()
    work = Path(tempfile.mkdtemp(prefix="synaptic-serve-"))
    # mlx_lm.server lists models from the HF cache and answers /v1/models with an empty body
    # when that directory is missing; a private one keeps the user's cache out of it.
    (work / "hub").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(work / "hub"), "HF_HOME": str(work / "hf")}
    port = free_port()
    command = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir), "--host", "127.0.0.1",
               "--port", str(port)]
    try:
        with _serve("mlx_lm.server", command, log_path, timeout, env=env, cwd=work, port=port) as url:
            yield url, str(model_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def llama_cpp_server(gguf_file: Path, log_path: Path, *, context: int = 4096,
                     timeout: float = 300.0) -> Iterator[tuple[str, str]]:
    """Serve a GGUF file with llama-cpp-python's server (its chat template comes from the file)."""
    if not can_serve("llama_cpp.server"):
        raise ServerFailed("backend local serves GGUF files with llama-cpp-python's server, which is not "
                           "installed: " + _install_hint("llama_cpp"))
    gguf_file = Path(gguf_file).resolve()
    alias = gguf_file.stem
    port = free_port()
    # Several eval requests arrive at once: without --interrupt_requests False each new one
    # cuts off the stream being generated.
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file), "--model_alias", alias,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(context),
               "--interrupt_requests", "False"]
    with _serve("llama-cpp-python's server", command, log_path, timeout, port=port) as url:
        yield url, alias
