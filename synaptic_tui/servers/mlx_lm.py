"""mlx_lm.server: the Apple-silicon default; on Linux it runs on mlx's CPU backend.

It serves a model directory with an mlx-lm adapter on top (`--adapter-path`),
so MLX checkpoints are served as they are; PEFT checkpoints are merged first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from synaptic_tui.servers import Plan, ServeError, install_hint, module_missing
from synaptic_tui.servers.targets import Target
from synaptic_tui.servers.tool_parsing import MLX_PARSERS, model_view


class MlxLmServer:
    name = "mlx"
    title = "mlx_lm.server"
    extra = "mlx"

    def missing(self) -> str | None:
        if module_missing("mlx_lm"):
            return f"not installed: {install_hint(self.extra)}"
        return None

    def export_needed(self, target: Target) -> str | None:
        if target.gguf is not None:
            raise ServeError("mlx_lm.server reads model directories; serve a GGUF file with --engine llama.cpp")
        if target.adapter is not None and target.adapter_kind != "mlx":
            return "merged-16bit"
        return None

    def plan(self, target: Target, model: str, port: int, work: Path) -> Plan:
        notes = []
        parser = MLX_PARSERS.get(target.tool_format or "")
        served = model
        if Path(model).is_dir():
            # A view named for the target; mlx_lm.server lists (and answers to) its absolute path.
            served = str(model_view(Path(model), work / target.served_name,
                                    {"tool_parser_type": parser} if parser else {}).resolve())
            if parser:
                notes.append(f"tool calls parsed by the server (mlx-lm's {parser} parser)")
        command = [sys.executable, "-m", "mlx_lm", "server", "--model", served, "--host", "127.0.0.1",
                   "--port", str(port)]
        if target.adapter is not None and target.adapter_kind == "mlx":
            command += ["--adapter-path", str(target.adapter)]
        # mlx_lm.server lists what the HF cache holds and answers /v1/models with an empty body when that
        # directory is missing; a private one keeps the user's cache out of it.
        (work / "hub").mkdir(parents=True, exist_ok=True)
        env = {"HF_HUB_CACHE": str(work / "hub"), "HF_HOME": str(work / "hf")}
        return Plan(command, model_id=served, serves={target.key: served}, env=env,
                    tool_parser=f"mlx_lm:{parser}" if parser else None, notes=notes)


ENGINE = MlxLmServer()
