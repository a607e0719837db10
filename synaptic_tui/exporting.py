"""Exports of a run's checkpoint, as the app sees them: where they go, what is there, and the export subprocess.

The work itself (merging, GGUF conversion, verification) is `python -m trainers.export`,
a child process because it imports torch. It prints one JSON event per line on
stdout; everything else it prints goes to `exports/export.log`. An export
directory counts only once `export.json` is in it: the exporter writes that
last, after verification, and renames the finished directory into place.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synaptic_tui.config import EXPORT_FORMATS
from synaptic_tui.runs import RunInfo

GGUF_FORMATS = tuple(f for f in EXPORT_FORMATS if f.startswith("gguf-"))
MERGED_FORMATS = ("merged-16bit", "merged-4bit")
# Bytes per parameter on disk, for the free-disk check before any work.
BYTES_PER_PARAM = {"merged-16bit": 2.0, "merged-4bit": 0.56, "gguf-f16": 2.0, "gguf-q8_0": 1.07,
                   "gguf-q4_k_m": 0.6}
EXPORT_RECORD = "export.json"


class ExportError(Exception):
    """An export that cannot start: bad checkpoint, a format this machine cannot make, no disk."""


def exports_root(run_dir: Path) -> Path:
    return Path(run_dir) / "exports"


def export_dir(run_dir: Path, checkpoint: str, fmt: str) -> Path:
    # Per checkpoint, so exporting checkpoint-20 never overwrites checkpoint-10's export.
    return exports_root(run_dir) / checkpoint / fmt


def read_export(path: Path) -> dict[str, Any] | None:
    """The record of a finished, verified export, or None when there is none (or only a partial one)."""
    try:
        data = json.loads((Path(path) / EXPORT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def list_exports(run_dir: Path) -> list[dict[str, Any]]:
    """Every finished export of a run, oldest checkpoint first."""
    found = []
    root = exports_root(run_dir)
    for record_path in sorted(root.glob(f"*/*/{EXPORT_RECORD}")):
        record = read_export(record_path.parent)
        if record is not None:
            found.append({**record, "path": str(record_path.parent)})
    return found


def serve_hint(run_dir: Path, checkpoint: str) -> str:
    """How to put a checkpoint behind a server the eval runner can reach, from its finished exports."""
    for fmt in ("gguf-q8_0", "gguf-q4_k_m", "gguf-f16"):
        record = read_export(export_dir(run_dir, checkpoint, fmt))
        if record and record.get("ollama_create"):
            return f"serve it with Ollama: {record['ollama_create']}"
    if read_export(export_dir(run_dir, checkpoint, "merged-16bit")):
        return f"serve it: mlx_lm.server --model {export_dir(run_dir, checkpoint, 'merged-16bit')} (OpenAI-compatible)"
    return "export it first (merged-16bit or GGUF: enter on the checkpoint, Export) to serve it"


def resolve_checkpoint(run: RunInfo, wanted: str) -> str:
    """best / final / checkpoint-N -> the name of an existing checkpoint directory of the run.

    "best" is what the run view stars (monitor.rank_run). A checkpoint saved after the run diverged
    (a non-finite loss or grad norm) is never best and is refused by name too.
    """
    from synaptic_tui.monitor import rank_run

    if run.problem:
        raise ExportError(f"{run.run_id} cannot be read ({run.problem})")
    ranked = rank_run(run)
    names = [row.name for row in ranked.rows]
    listed = ", ".join(names) or "none"
    if wanted == "best":
        if not ranked.best:
            if ranked.diverged_at is not None:
                raise ExportError(f"{run.run_id} diverged at step {ranked.diverged_at} (its loss or grad norm is "
                                  f"not a finite number) and no checkpoint before that can be ranked "
                                  f"(checkpoints: {listed})")
            raise ExportError(f"{run.run_id} has no checkpoint to call best (checkpoints: {listed})")
        return ranked.best
    if wanted not in names:
        raise ExportError(f"{run.run_id} has no checkpoint {wanted!r} (checkpoints: {listed})")
    row = next(r for r in ranked.rows if r.name == wanted)
    if not row.healthy:
        raise ExportError(f"{run.run_id}: {wanted} was saved after the run diverged at step {ranked.diverged_at} "
                          "(its loss or grad norm is not a finite number): its weights are not usable")
    return wanted


def order_formats(formats: list[str]) -> list[str]:
    """Known formats, deduplicated, in the order that lets later ones reuse earlier work."""
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ExportError(f"unknown export format {unknown[0]!r}: choose from {', '.join(EXPORT_FORMATS)}")
    if not formats:
        raise ExportError(f"no export format given: choose from {', '.join(EXPORT_FORMATS)}")
    return [f for f in EXPORT_FORMATS if f in formats]


def estimated_bytes(param_count: int | None, formats: list[str]) -> int:
    """Disk an export needs: each format's files, plus a temporary merge for GGUF without merged-16bit."""
    if not param_count:
        return 0
    total = sum(BYTES_PER_PARAM.get(f, 0.0) for f in formats)
    if any(f in GGUF_FORMATS for f in formats) and "merged-16bit" not in formats:
        total += BYTES_PER_PARAM["merged-16bit"]
    return int(param_count * total)


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def quantizer_available() -> str | None:
    """How k-quants can be made here: `llama-quantize` on PATH, or llama-cpp-python's library."""
    found = shutil.which("llama-quantize")
    if found:
        return found
    import importlib.util

    return "llama_cpp" if importlib.util.find_spec("llama_cpp") is not None else None


def cuda_present() -> bool:
    """A CUDA GPU, asked of nvidia-smi so the app never imports torch."""
    return shutil.which("nvidia-smi") is not None


def capabilities() -> dict[str, str | None]:
    """format -> None when this machine can make it, else why not (shown greyed out in the form)."""
    reasons: dict[str, str | None] = {f: None for f in EXPORT_FORMATS}
    if not cuda_present():
        reasons["merged-4bit"] = "needs a CUDA GPU (bitsandbytes 4-bit)"
    if quantizer_available() is None:
        reasons["gguf-q4_k_m"] = "needs llama.cpp's quantizer (llama-quantize on PATH, or llama-cpp-python)"
    return reasons


@dataclass
class ExportRequest:
    run: RunInfo
    checkpoint: str = "best"
    formats: list[str] = field(default_factory=lambda: ["lora"])


@dataclass
class ExportResult:
    exit_code: int
    checkpoint: str | None = None
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)  # format -> its export.json
    error: str | None = None


def export_command(request: ExportRequest) -> list[str]:
    command = [sys.executable, "-m", "trainers.export", "--run-dir", str(request.run.path),
               "--checkpoint", request.checkpoint]
    for fmt in request.formats:
        command += ["--format", fmt]
    return command


def export_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def run_export_async(request: ExportRequest,
                           on_event: Callable[[dict[str, Any]], Any] | None = None) -> ExportResult:
    """Run the exporter and report its events as they come; cancelling the task stops the exporter.

    A stopped exporter removes its partial directory (it handles SIGTERM); only
    finished exports stay.
    """
    log_dir = exports_root(request.run.path)
    log_dir.mkdir(parents=True, exist_ok=True)
    result = ExportResult(exit_code=1)
    with open(log_dir / "export.log", "ab") as log:
        process = await asyncio.create_subprocess_exec(
            *export_command(request), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=log, env=export_environment(), start_new_session=True)
        try:
            assert process.stdout is not None
            async for raw in process.stdout:
                line = raw.decode("utf-8", "replace")
                event = _parse_event(line)
                if event is None:
                    log.write(raw)
                    log.flush()
                    continue
                _record(result, event)
                if on_event is not None:
                    on_event(event)
            result.exit_code = await process.wait()
        except asyncio.CancelledError:
            await _stop(process)
            raise
        finally:
            if process.returncode is None:
                await _stop(process)
    if result.exit_code != 0 and not result.error:
        result.error = f"the exporter exited with code {result.exit_code} (see {log_dir / 'export.log'})"
    return result


def run_export(request: ExportRequest, on_event: Callable[[dict[str, Any]], Any] | None = None) -> ExportResult:
    return asyncio.run(run_export_async(request, on_event))


def _parse_event(line: str) -> dict[str, Any] | None:
    if not line.startswith('{"event"'):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _record(result: ExportResult, event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == "start":
        result.checkpoint = event.get("checkpoint")
    elif kind == "done":
        result.exports[str(event.get("format"))] = event.get("record") or {}
    elif kind == "error":
        result.error = str(event.get("message"))


async def _stop(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    try:
        await asyncio.wait_for(process.wait(), 30)
    except asyncio.TimeoutError:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await process.wait()
