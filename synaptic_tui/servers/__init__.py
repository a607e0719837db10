"""Local OpenAI-compatible servers for a checkpoint, an export or a base model, on the fastest engine here.

One module per engine, each answering to `Engine`: `vllm` (CUDA; LoRA adapters
served as they are, several checkpoints of a run on one server),
`transformers_serve` (`transformers serve --continuous-batching`, the CPU
default), `mlx_lm` (mlx_lm.server, the Apple-silicon default) and `llama_cpp`
(llama.cpp's server, for GGUF files). `launch` runs a server detached like a
training run and finds it again; `targets` says what `RUN[:CHECKPOINT] | MODEL`
names. Nothing here imports an ML library: engines are found with find_spec and
run as subprocesses.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from synaptic_tui.servers.targets import Target


class ServeError(RuntimeError):
    """A server that cannot be started or did not come up; the message says why and what to do."""


@dataclass
class Plan:
    """How one engine serves one target: the command, and the model ids it will answer to."""

    command: list[str]
    model_id: str  # the id to ask for the target
    serves: dict[str, str]  # target key -> model id: everything this server answers for
    env: dict[str, str] = field(default_factory=dict)  # on top of the serving environment
    tool_parser: str | None = None  # the engine's own tool-call parser; None: the evaluator's text parsers
    notes: list[str] = field(default_factory=list)


class Engine(Protocol):
    name: str  # what --engine takes
    title: str  # what a person reads
    extra: str  # the pip extra that installs it

    def missing(self) -> str | None:
        """Why this engine cannot run here (not installed, no GPU), with what to do; None when it can."""

    def export_needed(self, target: Target) -> str | None:
        """The export format the target must be turned into first (merged-16bit, gguf-q8_0), or None."""

    def plan(self, target: Target, model: str, port: int, work: Path) -> Plan:
        """The command serving `model` (the target's weights, or the export made for it) on 127.0.0.1:port."""


def module_missing(*modules: str) -> list[str]:
    found = []
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                found.append(module)
        except (ModuleNotFoundError, ValueError):  # a submodule of a missing package
            found.append(module)
    return found


def cuda_present() -> bool:
    """An NVIDIA GPU, asked of nvidia-smi so nothing imports torch."""
    return shutil.which("nvidia-smi") is not None


def apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def install_hint(extra: str) -> str:
    return f"pip install -c .ci/constraints.txt -e '.[{extra}]'"


def engines() -> dict[str, Engine]:
    from synaptic_tui.servers import llama_cpp, mlx_lm, transformers_serve, vllm

    return {e.name: e for e in (vllm.ENGINE, transformers_serve.ENGINE, mlx_lm.ENGINE, llama_cpp.ENGINE)}


ENGINE_NAMES = ("vllm", "transformers", "mlx", "llama.cpp")


def default_order() -> list[str]:
    """Engines from the fastest this platform offers: vLLM on CUDA, mlx on Apple silicon,
    transformers serve (continuous batching) on a plain CPU, llama.cpp last (it needs a GGUF)."""
    if cuda_present():
        return ["vllm", "transformers", "llama.cpp", "mlx"]
    if apple_silicon():
        return ["mlx", "transformers", "llama.cpp"]
    return ["transformers", "mlx", "llama.cpp"]


def _only_gguf_exported(target: Target) -> bool:
    from synaptic_tui.exporting import export_dir, read_export
    from synaptic_tui.servers.llama_cpp import exported_gguf

    return (target.run_dir is not None and exported_gguf(target) is not None
            and read_export(export_dir(target.run_dir, target.checkpoint, "merged-16bit")) is None)


def choose_engine(target: Target, wanted: str | None = None) -> Engine:
    """The engine for a target: `wanted` if it can run here, else the first of the platform's order that can.

    A GGUF file goes to llama.cpp, and so does a checkpoint exported as GGUF and not merged (where llama.cpp is
    installed): what was made is served, nothing new is merged. Raises ServeError saying what to install when
    nothing can serve it.
    """
    table = engines()
    if wanted and wanted != "auto":
        if wanted not in table:
            raise ServeError(f"unknown engine {wanted!r}: choose from {', '.join(ENGINE_NAMES)}")
        engine = table[wanted]
        reason = engine.missing()
        if reason:
            raise ServeError(reason)
        return engine
    order = ["llama.cpp"] if target.gguf is not None else default_order()
    if target.checkpoint and _only_gguf_exported(target):
        order = ["llama.cpp"] + [n for n in order if n != "llama.cpp"]  # serve what was made, merge nothing new
    reasons = []
    for name in order:
        reason = table[name].missing()
        if reason is None:
            return table[name]
        reasons.append(f"{table[name].title}: {reason}")
    raise ServeError("no engine can serve here:\n  " + "\n  ".join(reasons))
