"""`synaptic-tui doctor`: what this machine can do, checked concurrently and without importing ML libraries.

Anything that could be slow (nvidia-smi, importing mlx or unsloth, HTTP)
runs in a subprocess or over httpx, so one stuck check never blocks another.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import ipaddress
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Literal
from urllib.parse import urlsplit

Status = Literal["ok", "warn", "fail", "info"]
EXTRAS = {
    "train": ("torch", "transformers", "trl", "peft", "datasets", "accelerate"),
    "mlx": ("mlx", "mlx-lm"),
    "unsloth": ("unsloth",),
}
INSTALL_TRAIN = "pip install -c .ci/constraints.txt -e '.[train]'"
INSTALL_MLX = "pip install -e '.[mlx]'"
NVIDIA_QUERY = ("nvidia-smi", "--query-gpu=name,memory.total,memory.free,driver_version",
                "--format=csv,noheader,nounits")
GB = 1024**3
LOW_DISK_GB = 20
NVIDIA_TIMEOUT = 15.0
MLX_TIMEOUT = 30.0
UNSLOTH_TIMEOUT = 60.0


@dataclass
class Check:
    name: str
    status: Status
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


async def _run(*command: str, timeout: float) -> tuple[int, str, str]:
    """Run a command, and kill it on timeout or if the caller is cancelled (a cancelled worker does not)."""
    process = await asyncio.create_subprocess_exec(*command, stdin=subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def check_python() -> Check:
    version = platform.python_version()
    detail = {"version": version, "executable": sys.executable, "implementation": platform.python_implementation()}
    if sys.version_info < (3, 10):
        return Check("Python", "fail", f"{version} is too old: synaptic-tui needs 3.10+ ({sys.executable})", detail)
    return Check("Python", "ok", f"{version} ({sys.executable})", detail)


def check_extras() -> Check:
    """Installed extras, from package metadata only: importing torch here would cost seconds."""
    versions = {name: {dist: _version(dist) for dist in dists} for name, dists in EXTRAS.items()}
    complete = [name for name in ("train", "mlx") if all(versions[name].values())]
    parts = []
    for name, dists in versions.items():
        have = [f"{dist} {version}" for dist, version in dists.items() if version]
        missing = [dist for dist, version in dists.items() if not version]
        if have:
            parts.append(f"{name}: {', '.join(have)}" + (f" (missing {', '.join(missing)})" if missing else ""))
    summary = "; ".join(parts) or "no training extra installed"
    detail: dict[str, Any] = {"versions": versions, "complete": complete}
    if complete:
        return Check("Extras", "ok", summary, detail)
    detail["install"] = INSTALL_TRAIN
    return Check("Extras", "warn", f"{summary}; nothing can train yet: {INSTALL_TRAIN}", detail)


def _parse_nvidia_smi(out: str) -> list[dict[str, Any]]:
    gpus = []
    for index, line in enumerate(l for l in out.splitlines() if l.strip()):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            total, free = float(parts[1]) / 1024, float(parts[2]) / 1024  # nounits: MiB
        except ValueError:  # "[N/A]" on some boards
            total = free = None
        gpus.append({"index": index, "name": parts[0], "memory_total_gb": total, "memory_free_gb": free,
                     "driver": parts[3]})
    return gpus


def _gb(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


async def check_cuda() -> Check:
    if shutil.which("nvidia-smi") is None:
        return Check("CUDA", "info", "no NVIDIA GPU (nvidia-smi not found)", {"gpus": []})
    try:
        code, out, err = await _run(*NVIDIA_QUERY, timeout=NVIDIA_TIMEOUT)
    except asyncio.TimeoutError:
        return Check("CUDA", "warn", f"nvidia-smi did not answer in {NVIDIA_TIMEOUT:.0f} s", {"gpus": []})
    except OSError as exc:
        return Check("CUDA", "warn", f"nvidia-smi could not run: {exc}", {"gpus": []})
    if code != 0:
        # Typically a driver/library mismatch: the message says which.
        reason = _last_line(err) or _last_line(out) or f"exit code {code}"
        return Check("CUDA", "warn", f"nvidia-smi failed: {reason}", {"gpus": [], "exit_code": code})
    gpus = _parse_nvidia_smi(out)
    if not gpus:
        return Check("CUDA", "warn", "nvidia-smi listed no GPUs", {"gpus": []})
    listing = ", ".join(f"{g['name']} ({_gb(g['memory_free_gb'])}/{_gb(g['memory_total_gb'])} GB free)" for g in gpus)
    plural = "s" if len(gpus) > 1 else ""
    return Check("CUDA", "ok", f"{len(gpus)} GPU{plural}: {listing}; driver {gpus[0]['driver']}",
                 {"gpus": gpus, "driver": gpus[0]["driver"]})


async def check_mlx() -> Check:
    # find_spec on a top-level name does not import it, so nothing is spawned when mlx is absent.
    if importlib.util.find_spec("mlx") is None:
        return Check("MLX", "info", f"not installed ({INSTALL_MLX})", {"installed": False})
    detail: dict[str, Any] = {"installed": True, "mlx": _version("mlx"), "mlx_lm": _version("mlx-lm")}
    try:
        code, out, err = await _run(sys.executable, "-c", "import mlx.core as mx; print(mx.default_device())",
                                    timeout=MLX_TIMEOUT)
    except asyncio.TimeoutError:
        return Check("MLX", "warn", f"importing mlx took over {MLX_TIMEOUT:.0f} s", detail)
    if code != 0:
        hint = " (on Linux install mlx[cpu])" if sys.platform.startswith("linux") else ""
        return Check("MLX", "warn", f"mlx does not import: {_last_line(err) or f'exit code {code}'}{hint}", detail)
    device = out.strip()
    detail["device"] = device
    if "cpu" in device.lower():
        note = "CPU backend (mlx[cpu] on Linux), trains slowly" if sys.platform.startswith("linux") else "CPU backend"
        return Check("MLX", "ok", f"{device}: {note}", detail)
    return Check("MLX", "ok", device, detail)


async def check_unsloth() -> Check:
    if importlib.util.find_spec("unsloth") is None:
        return Check("Unsloth", "info", "not installed (optional; it wants its own environment)", {"installed": False})
    detail = {"installed": True, "version": _version("unsloth")}
    try:
        code, _, err = await _run(sys.executable, "-c", "import unsloth", timeout=UNSLOTH_TIMEOUT)
    except asyncio.TimeoutError:
        return Check("Unsloth", "warn", f"importing unsloth took over {UNSLOTH_TIMEOUT:.0f} s", detail)
    if code != 0:
        return Check("Unsloth", "warn", f"installed but does not import: {_last_line(err) or f'exit code {code}'}",
                     detail)
    version = f" {detail['version']}" if detail["version"] else ""
    return Check("Unsloth", "ok", f"unsloth{version} imports", detail)


def check_serving() -> Check:
    """Which engines `synaptic-tui serve` can start here, and the one it picks by default (find_spec only)."""
    from synaptic_tui.servers import default_order, engines

    table = engines()
    engines_detail = {name: {"title": e.title, "extra": e.extra, "missing": e.missing()} for name, e in table.items()}
    available = [name for name, d in engines_detail.items() if d["missing"] is None]
    default = next((name for name in default_order() if name in available and name != "llama.cpp"), None)
    detail: dict[str, Any] = {"engines": engines_detail, "available": available, "default": default}
    if not available:
        return Check("Serving", "warn", "no engine to serve a checkpoint: "
                     + "; ".join(f"{d['title']}: {d['missing']}" for d in engines_detail.values()), detail)
    missing = [f"{d['title']} (.[{d['extra']}])" for d in engines_detail.values() if d["missing"]]
    summary = (f"default {table[default].title}" if default else "GGUF files only") + \
        f"; available: {', '.join(table[n].title for n in available)}"
    if missing:
        summary += f"; not here: {', '.join(missing)}"
    return Check("Serving", "ok", summary, detail)


def check_disk(runs_dir: Path) -> Check:
    where = Path(runs_dir).expanduser().absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    free = usage.free / GB
    detail = {"path": str(where), "runs_dir": str(runs_dir), "free_gb": free, "total_gb": usage.total / GB}
    if free < LOW_DISK_GB:
        return Check("Disk", "warn", f"{free:.1f} GB free at {where}, under {LOW_DISK_GB} GB "
                                     "(checkpoints and merged exports need room)", detail)
    return Check("Disk", "ok", f"{free:.1f} GB free at {where}", detail)


def _meminfo() -> tuple[float | None, float | None]:
    """(total, available) in GB: /proc/meminfo on Linux, sysctl on macOS (total only)."""
    try:
        values = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.split():
                values[key] = int(rest.split()[0]) * 1024  # kB
        return values["MemTotal"] / GB, values.get("MemAvailable", values.get("MemFree", 0)) / GB
    except (OSError, KeyError, ValueError):
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5).stdout
            return int(out.strip()) / GB, None
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, None
    except (ValueError, OSError, AttributeError):
        return None, None


def check_memory() -> Check:
    total, available = _meminfo()
    if total is None:
        return Check("Memory", "info", "unknown", {"total_gb": None, "available_gb": None})
    available_text = f", {available:.1f} GB available" if available is not None else ""
    return Check("Memory", "ok", f"{total:.1f} GB total{available_text}",
                 {"total_gb": total, "available_gb": available})


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def check_server(name: str, url: str, path: str, key: str, timeout: float) -> Check:
    """GET url+path and list the models under `key` (Ollama: models[].name, OpenAI: data[].id)."""
    import httpx

    endpoint = url.rstrip("/") + path
    detail: dict[str, Any] = {"url": url, "endpoint": endpoint, "reachable": False, "models": []}
    try:
        # With HTTP_PROXY set, httpx would send even 127.0.0.1 to the proxy and a running server would look down.
        async with httpx.AsyncClient(timeout=timeout, trust_env=not _is_loopback(url)) as client:
            response = await client.get(endpoint)
    except httpx.InvalidURL as exc:
        return Check(name, "warn", f"invalid URL {url!r}: {exc}", detail)
    except httpx.HTTPError:
        return Check(name, "info", f"not reachable at {url}", detail)
    detail["reachable"] = True
    detail["http_status"] = response.status_code
    try:
        items = response.json()[key] if response.is_success else None
    except (ValueError, KeyError, TypeError):
        items = None
    if not isinstance(items, list):
        what = f"HTTP {response.status_code}" if not response.is_success else f"no {key!r} list"
        return Check(name, "warn", f"something answers at {url} but not like {name} ({path}: {what})", detail)
    models = [str(m.get("name") or m.get("model") or m.get("id")) for m in items if isinstance(m, dict)]
    detail["models"] = models
    return Check(name, "ok", f"reachable at {url}, {len(models)} model{'' if len(models) == 1 else 's'}", detail)


def check_hf_token() -> Check:
    from synaptic_tui.hf_token import find_hf_token

    # Only the source leaves this function: the token itself is dropped here.
    token, source = find_hf_token()
    if token:
        return Check("HF token", "ok", f"set ({source})", {"set": True, "source": source})
    return Check("HF token", "info", "not set (needed only to upload: HF_TOKEN, .env or `hf auth login`)",
                 {"set": False, "source": None})


async def _guarded(name: str, check: Awaitable[Check]) -> Check:
    """A check that breaks becomes a warning in the report instead of taking the whole doctor down."""
    try:
        return await check
    except Exception as exc:  # noqa: BLE001 - any failure of a probe is something to report
        return Check(name, "warn", f"check failed: {type(exc).__name__}: {exc}", {"error": type(exc).__name__})


async def _sync(check, *args) -> Check:
    return check(*args)


async def run_checks(runs_dir: Path, *, ollama_url: str = "http://127.0.0.1:11434",
                     lmstudio_url: str = "http://127.0.0.1:1234", timeout: float = 1.5) -> list[Check]:
    """Every check, run concurrently, in display order."""
    checks = [
        ("Python", _sync(check_python)),
        ("Extras", _sync(check_extras)),
        ("CUDA", check_cuda()),
        ("MLX", check_mlx()),
        ("Unsloth", check_unsloth()),
        ("Serving", _sync(check_serving)),
        ("Disk", _sync(check_disk, runs_dir)),
        ("Memory", asyncio.to_thread(check_memory)),
        ("Ollama", check_server("Ollama", ollama_url, "/api/tags", "models", timeout)),
        ("LM Studio", check_server("LM Studio", lmstudio_url, "/v1/models", "data", timeout)),
        # Reads files and imports huggingface_hub: kept off the event loop.
        ("HF token", asyncio.to_thread(check_hf_token)),
    ]
    return list(await asyncio.gather(*(_guarded(name, check) for name, check in checks)))


def checks_to_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in checks]


def format_report(checks: list[Check]) -> str:
    """One aligned line per check: name, status word, summary."""
    if not checks:
        return ""
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.name:<{width}}  {c.status:<4}  {' '.join(c.summary.split())}" for c in checks)
