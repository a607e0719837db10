"""`transformers serve --continuous-batching`: transformers' own OpenAI-compatible server, the CPU default.

It loads a full model directory (or a Hub id), not a PEFT adapter, so a
checkpoint is merged first (the merged-16bit export, made on demand). Measured
on 2 CPU cores with a 135M model at concurrency 4, it answered 7x the tokens/s
of mlx_lm.server (benchmarks/eval_throughput.py measures it again).
"""

from __future__ import annotations

import sys
from pathlib import Path

from synaptic_tui.servers import Plan, ServeError, cuda_present, install_hint, module_missing
from synaptic_tui.servers.targets import Target
from synaptic_tui.servers.tool_parsing import model_view, transformers_response_template

CPU_CACHE_BLOCKS = 64
CPU_BATCH_TOKENS = 2048


class TransformersServe:
    name = "transformers"
    title = "transformers serve"
    extra = "serve"

    def missing(self) -> str | None:
        absent = module_missing("transformers", "torch", "fastapi", "uvicorn", "openai")
        if absent:
            return f"not installed (no {', '.join(absent)}): {install_hint(self.extra)}"
        return None

    def export_needed(self, target: Target) -> str | None:
        if target.gguf is not None:
            raise ServeError("transformers serve reads model directories; serve a GGUF file with --engine llama.cpp")
        return "merged-16bit" if target.adapter is not None else None

    def plan(self, target: Target, model: str, port: int, work: Path) -> Plan:
        response = transformers_response_template(target.tool_format, target.template)
        notes = []
        served = model
        if Path(model).is_dir():
            # A pinned server answers to the name it was given: a view named for the target, relative to the
            # server's directory (its working directory), is that name.
            served = target.served_name
            model_view(Path(model), work / served, {"response_template": response} if response else {})
            if response is not None:
                notes.append(f"tool calls parsed by the server ({target.tool_format} response template)")
        command = [sys.executable, "-m", "transformers.cli.transformers", "serve", served, "--continuous-batching",
                   "--host", "127.0.0.1", "--port", str(port)]
        if not cuda_present():
            # bf16 weights (a merged export) run several times slower than float32 on a CPU without AMX.
            command += ["--device", "cpu", "--dtype", "float32"]
            # Left to itself, continuous batching sizes its KV cache from free memory: 14 GB of RAM for the
            # 2-layer demo model here, and most of a minute zeroing it on the first request. 64 pages of 256
            # tokens hold the contexts of a concurrent eval's requests.
            command += ["--cb-num-blocks", str(CPU_CACHE_BLOCKS), "--cb-max-batch-tokens", str(CPU_BATCH_TOKENS)]
        return Plan(command, model_id=served, serves={target.key: served},
                    tool_parser="transformers" if response is not None else None, notes=notes)


ENGINE = TransformersServe()
