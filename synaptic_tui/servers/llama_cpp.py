"""llama.cpp's server for GGUF files: `llama-server` where it is on PATH, else llama-cpp-python's.

A checkpoint is converted first (the gguf-q8_0 export, made on demand). llama.cpp's
own server runs the GGUF's chat template (`--jinja`) and parses tool calls
itself; llama-cpp-python's server does neither for our templates, so its tool
calls are read from the text.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from synaptic_tui.servers import Plan, module_missing
from synaptic_tui.servers.targets import Target

INSTALL = ("llama.cpp's llama-server on PATH, or llama-cpp-python's server (compiles from source): "
           "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install -c .ci/constraints.txt -e '.[llama-cpp]'")
CONTEXT = 4096


def exported_gguf(target: Target) -> str | None:
    """A GGUF format the target's checkpoint is already exported in, q8_0 first."""
    from synaptic_tui.exporting import export_dir, read_export

    if target.run_dir is None or target.checkpoint is None:
        return None
    return next((fmt for fmt in ("gguf-q8_0", "gguf-f16", "gguf-q4_k_m")
                 if read_export(export_dir(target.run_dir, target.checkpoint, fmt))), None)


class LlamaCppServer:
    name = "llama.cpp"
    title = "llama.cpp server"
    extra = "llama-cpp"

    def missing(self) -> str | None:
        if shutil.which("llama-server") or not module_missing("llama_cpp", "llama_cpp.server"):
            return None
        return f"not installed: {INSTALL}"

    def export_needed(self, target: Target) -> str | None:
        if target.gguf is not None:
            return None
        return exported_gguf(target) or "gguf-q8_0"

    def plan(self, target: Target, model: str, port: int, work: Path) -> Plan:
        path = Path(model)
        if path.is_dir():  # an export directory: its one .gguf file
            path = next(path.glob("*.gguf"))
        alias = target.served_name
        binary = shutil.which("llama-server")
        if binary:
            command = [binary, "-m", str(path), "--alias", alias, "--host", "127.0.0.1", "--port", str(port),
                       "-c", str(CONTEXT), "--jinja"]
            return Plan(command, model_id=alias, serves={target.key: alias}, tool_parser="llama.cpp")
        # Several eval requests arrive at once: without --interrupt_requests False each new one cuts off
        # the stream being generated.
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", alias,
                   "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(CONTEXT),
                   "--interrupt_requests", "False"]
        return Plan(command, model_id=alias, serves={target.key: alias})


ENGINE = LlamaCppServer()
