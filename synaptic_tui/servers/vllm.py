"""vLLM's OpenAI-compatible server: the CUDA default.

A run's PEFT checkpoints are served as LoRA adapters on the base model without
merging: one server for the base and every checkpoint of the run
(`--enable-lora --lora-modules checkpoint-2=... checkpoint-4=...`), each asked
for by its checkpoint's name, the base by its own. A run whose template added
tokens to the vocabulary is served merged instead (a LoRA adapter cannot carry
new embedding rows into vLLM), as are MLX adapters.

Unproven on a GPU here: the command line and adapter wiring are tested, vLLM
itself has never run in this project's CI (it needs CUDA).
"""

from __future__ import annotations

import sys
from pathlib import Path

from synaptic_tui.servers import Plan, ServeError, cuda_present, install_hint, module_missing
from synaptic_tui.servers.targets import Target, run_target
from synaptic_tui.servers.tool_parsing import VLLM_PARSERS

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what --max-lora-rank accepts
MAX_LORAS = 4  # adapters active in one batch


def lora_rank_bound(rank: int | None) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds `rank`."""
    wanted = rank or 8
    for allowed in LORA_RANKS:
        if allowed >= wanted:
            return allowed
    raise ServeError(f"LoRA rank {rank} is above vLLM's largest ({LORA_RANKS[-1]}): serve the merged export")


def served_as_adapter(target: Target) -> bool:
    return target.adapter is not None and target.adapter_kind == "peft" and not target.added_tokens


def run_adapters(target: Target) -> list[Target]:
    """Every PEFT checkpoint of the target's run (the target among them), for one server."""
    from synaptic_tui.runs import load_run

    run = load_run(target.run_dir) if target.run_dir is not None else None
    if run is None:
        return [target]
    found = [run_target(run, c.name) for c in run.checkpoints()]
    found = [t for t in found if served_as_adapter(t)]
    return found if any(t.key == target.key for t in found) else [target, *found]


class VllmServer:
    name = "vllm"
    title = "vLLM"
    extra = "vllm"

    def missing(self) -> str | None:
        if module_missing("vllm"):
            return f"not installed: {install_hint(self.extra)} (Linux with an NVIDIA GPU)"
        if not cuda_present():
            return "needs an NVIDIA GPU (no nvidia-smi here)"
        return None

    def export_needed(self, target: Target) -> str | None:
        if target.gguf is not None:
            raise ServeError("this server reads model directories; serve a GGUF file with --engine llama.cpp")
        if target.adapter is not None and not served_as_adapter(target):
            return "merged-16bit"
        return None

    def plan(self, target: Target, model: str, port: int, work: Path) -> Plan:
        if served_as_adapter(target):
            return self._lora_plan(target, port)
        name = target.served_name
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                   "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)]
        parser = self._tool_args(target, command)
        return Plan(command, model_id=name, serves={target.key: name}, tool_parser=parser)

    def _lora_plan(self, target: Target, port: int) -> Plan:
        adapters = run_adapters(target)
        base = target.base_model
        base_target = Target(base, base, base)
        base_name = base_target.served_name
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", base,
                   "--served-model-name", base_name, "--host", "127.0.0.1", "--port", str(port),
                   "--enable-lora", "--max-lora-rank", str(lora_rank_bound(max(t.lora_rank or 8 for t in adapters))),
                   "--max-loras", str(min(len(adapters), MAX_LORAS)),
                   "--lora-modules", *(f"{t.served_name}={t.adapter}" for t in adapters)]
        notes = [f"{len(adapters)} checkpoint(s) of the run as LoRA adapters on {base_name}"]
        serves = {t.key: t.served_name for t in adapters}
        if target.template not in (None, "model") and target.adapter is not None \
                and (target.adapter / "chat_template.jinja").is_file():
            # The run trained with a template other than the base model's. vLLM applies one template to every
            # model it serves, so this server's base is not the base as it ships: it is not offered for reuse.
            command += ["--chat-template", str(target.adapter / "chat_template.jinja")]
            notes.append(f"chat template {target.template} for every model on this server")
        else:
            serves[base_target.key] = base_name
        parser = self._tool_args(target, command)
        return Plan(command, model_id=target.served_name, serves=serves, tool_parser=parser, notes=notes)

    @staticmethod
    def _tool_args(target: Target, command: list[str]) -> str | None:
        parser = VLLM_PARSERS.get(target.tool_format or "")
        if parser:
            command += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
        return parser


ENGINE = VllmServer()
