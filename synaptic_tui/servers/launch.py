"""Servers started detached like training runs, found again, reused, health-checked and stopped.

A server lives in `<runs dir>/.servers/<server_id>/`: `server.json` (engine,
what it serves and under which model ids, port, URL, state, error),
`launch.json` (pid, process group, start time: synaptic_tui.jobs) and
`server.log`. It runs in its own session, so closing the app or the terminal
leaves it up for the next eval or chat; `serve stop` ends it. States:
starting -> ready (answers /v1/models with its model), failed (exited: the
log's tail says why) or stopped.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from synaptic_tui.runs import atomic_write_text, load_run, slugify, utc_now
from synaptic_tui.servers import Engine, ServeError, choose_engine
from synaptic_tui.servers.targets import Target

SERVERS_DIR = ".servers"
STARTING, READY, FAILED, STOPPED = "starting", "ready", "failed", "stopped"
LIVE = (STARTING, READY)
RECORD = "server.json"
STOP_GRACE_S = 20.0
Say = Callable[[str], Any]


@dataclass
class Server:
    server_id: str
    engine: str
    label: str  # what it was started for, as a person reads it
    ref: str  # the same, resolved (targets.Target.portable_ref): what to ask `serve` for again
    key: str  # the target it was started for (targets.Target.key)
    port: int
    url: str  # ends in /v1
    model_id: str  # the id to ask for `key`
    serves: dict[str, str] = field(default_factory=dict)  # every target key it answers for -> model id
    state: str = STARTING
    tool_parser: str | None = None  # the server's own tool-call parser, when it has one for this format
    tool_format: str | None = None  # the format the run's template writes (the evaluator's text parsers)
    command: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started_at: str | None = None
    ready_at: str | None = None
    ended_at: str | None = None
    error: str | None = None
    stop_requested_at: str | None = None  # set before the signal, so whoever sees it gone knows it was asked to go
    path: Path = field(default=Path("."), compare=False)

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def log_path(self) -> Path:
        return self.path / "server.log"

    def model_for(self, key: str) -> str | None:
        return self.serves.get(key)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> Server:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "path"}
        return cls(**known, path=Path(path))


def servers_root(runs_dir: Path) -> Path:
    return Path(runs_dir) / SERVERS_DIR


def read_server(path: Path) -> Server | None:
    try:
        data = json.loads((Path(path) / RECORD).read_text())
        return Server.from_dict(data, Path(path)) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def write_server(server: Server) -> None:
    data = server.to_dict()
    data.pop("path")
    atomic_write_text(server.path / RECORD, json.dumps(data, indent=2) + "\n")


def log_tail(path: Path, lines: int = 6) -> list[str]:
    """The last lines of a server's log that say something (progress bars and blank lines left out)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    kept = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return kept[-lines:]


def process_alive(server: Server) -> bool | None:
    from synaptic_tui.jobs import trainer_alive

    return trainer_alive(server.path)


def reconcile_server(server: Server) -> Server:
    """A server left starting/ready whose process is gone is failed, with its log's tail as the reason."""
    if not server.live or process_alive(server) is not False:
        return server
    fresh = read_server(server.path) or server  # a stopper may have written its state meanwhile
    if not fresh.live:
        return fresh
    fresh.ended_at = utc_now()
    if fresh.stop_requested_at:
        fresh.state = STOPPED
    else:
        tail = log_tail(fresh.log_path)
        fresh.state = FAILED
        fresh.error = f"{fresh.engine} exited" + (f": {tail[-1]}" if tail else " without output")
    write_server(fresh)
    return fresh


def list_servers(runs_dir: Path, *, live_only: bool = False) -> list[Server]:
    """Every server of this runs dir, newest first, with its real state."""
    root = servers_root(runs_dir)
    try:
        entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True)
    except OSError:
        return []
    found = []
    for path in entries:
        server = read_server(path)
        if server is None:
            continue
        server = reconcile_server(server)
        if server.live or not live_only:
            found.append(server)
    return found


def find_server(runs_dir: Path, ref: str) -> Server:
    """A server by id, unique id prefix, part of it, or port."""
    servers = list_servers(runs_dir)
    exact = [s for s in servers if s.server_id == ref or str(s.port) == ref]
    matches = exact or [s for s in servers if s.server_id.startswith(ref)] or [s for s in servers
                                                                                if ref in s.server_id]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupError(f"no server {ref!r} in {servers_root(runs_dir)}")
    raise LookupError(f"{ref!r} matches {len(matches)} servers: {', '.join(s.server_id for s in matches[:5])}")


def stop_server(server: Server, grace: float = STOP_GRACE_S) -> bool:
    """SIGTERM to the server's process group, SIGKILL after `grace` seconds; True if it was running."""
    from synaptic_tui.jobs import read_launch

    record = read_launch(server.path)
    was_running = record is not None and process_alive(server) is True
    if was_running:
        fresh = read_server(server.path) or server
        fresh.stop_requested_at = utc_now()
        write_server(fresh)
        try:
            os.killpg(record.pgid, signal.SIGTERM)
        except ProcessLookupError:
            was_running = False
        deadline = time.monotonic() + grace
        while was_running and process_alive(server) is True and time.monotonic() < deadline:
            time.sleep(0.1)
        if was_running and process_alive(server) is True:
            try:
                os.killpg(record.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while process_alive(server) is True and time.monotonic() < deadline + 5:
                time.sleep(0.1)
    fresh = read_server(server.path) or server
    if fresh.live:
        fresh.state, fresh.ended_at = STOPPED, utc_now()
        write_server(fresh)
    server.state = fresh.state
    return was_running


# --- starting -----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(target: Target, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # Idle OpenMP threads spin by default; on a shared CPU they take the cores from generation.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    if Path(target.base_model).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")  # local weights: never reach for the Hub (and hang offline)
    env.update(extra)
    return env


def make_server_id(engine: str, label: str, now: datetime | None = None) -> str:
    now = now or datetime.now()
    return f"{now:%Y%m%d-%H%M%S}-{slugify(engine)}-{slugify(label.split(':')[-1] if ':' in label else label)}"


async def weights_for(target: Target, engine: Engine, say: Say) -> str:
    """What the engine loads: the target's own weights, or the export it needs, made now if missing."""
    from synaptic_tui.exporting import ExportRequest, export_dir, read_export, run_export_async

    fmt = engine.export_needed(target)
    if fmt is None:
        return str(target.gguf) if target.gguf is not None else target.base_model
    if target.run_dir is None or target.checkpoint is None:
        raise ServeError(f"{engine.title} cannot load the adapter {target.adapter} as it is, and it belongs to no "
                         "run to export it from: merge it into its base model first")
    path = export_dir(target.run_dir, target.checkpoint, fmt)
    if read_export(path) is None:
        say(f"{engine.title} cannot load a {target.adapter_kind} adapter as it is: exporting {target.label} "
            f"as {fmt} first (synaptic-tui export {target.run_dir.name} --checkpoint {target.checkpoint} "
            f"--format {fmt})")
        run = load_run(target.run_dir)
        result = await run_export_async(ExportRequest(run, target.checkpoint, [fmt]), on_event=lambda e: (
            e.get("event") == "step" and say(f"  export: {e.get('message')}")))
        if result.exit_code != 0:
            raise ServeError(f"exporting {target.label} as {fmt} failed: {result.error}")
    return str(path)


def launch_server(target: Target, engine: Engine, weights: str, runs_dir: Path, port: int | None = None) -> Server:
    """Start the engine detached on a free loopback port and write its server.json (state starting)."""
    from synaptic_tui.jobs import launch_detached

    root = servers_root(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    base_id = make_server_id(engine.name, target.label)
    for attempt in range(1, 100):
        path = root / (base_id if attempt == 1 else f"{base_id}-{attempt}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise ServeError(f"no free server id under {root}")
    port = port or free_port()
    plan = engine.plan(target, weights, port, path)
    server = Server(path.name, engine.name, target.label, target.portable_ref, target.key, port,
                    f"http://127.0.0.1:{port}/v1", plan.model_id, plan.serves, STARTING, plan.tool_parser,
                    target.tool_format, plan.command, plan.notes, started_at=utc_now(), path=path)
    write_server(server)
    launch_detached(plan.command, path, server.log_path, server_environment(target, plan.env))
    return server


async def probe(server: Server, timeout: float = 2.0) -> list[str] | None:
    """The model ids the server lists, or None when it does not answer."""
    from evaluator.clients import BackendError, OpenAIClient

    async with OpenAIClient(server.url, timeout=timeout, connect_timeout=timeout, retries=0) as client:
        try:
            return await client.list_models()
        except BackendError:
            return None


async def answers(server: Server) -> bool:
    """Whether a server that was ready still is: it lists models, or is too busy generating to say so in time."""
    from evaluator.clients import BackendError, OpenAIClient

    async with OpenAIClient(server.url, timeout=10, connect_timeout=5, retries=0) as client:
        try:
            await client.list_models()
        except BackendError as exc:
            return exc.kind == "timeout"
    return True


async def wait_ready(server: Server, timeout: float = 900.0, say: Say | None = None) -> Server:
    """Until the server lists its model: ready. Raises ServeError with the log's tail when it exits first."""
    deadline = time.monotonic() + timeout
    said = 0.0
    while True:
        fresh = reconcile_server(read_server(server.path) or server)
        if fresh.state == FAILED:
            tail = "\n    ".join(log_tail(fresh.log_path)) or "(no output)"
            raise ServeError(f"{fresh.engine} for {fresh.label} exited before it was ready; the end of "
                             f"{fresh.log_path}:\n    {tail}")
        if fresh.state == STOPPED:
            raise ServeError(f"the server {fresh.server_id} was stopped before it was ready")
        models = await probe(fresh)
        if models is not None and fresh.model_id in models:
            if fresh.state != READY:
                fresh.state, fresh.ready_at = READY, utc_now()
                write_server(fresh)
            return fresh
        if time.monotonic() > deadline:
            listed = f" (it lists {', '.join(models)})" if models else ""
            raise ServeError(f"{fresh.engine} did not serve {fresh.model_id} at {fresh.url} within {timeout:.0f} s"
                             f"{listed}; see {fresh.log_path}")
        if say is not None and time.monotonic() - said > 15:
            said = time.monotonic()
            last = log_tail(fresh.log_path, 1)
            say(f"waiting for {fresh.engine} at {fresh.url}" + (f": {last[0][:120]}" if last else ""))
        await asyncio.sleep(0.5)


@contextmanager
def _key_lock(runs_dir: Path, key: str) -> Iterator[None]:
    """One starter per target at a time (two evals of one checkpoint must not start two servers)."""
    root = servers_root(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{hashlib.sha1(key.encode()).hexdigest()[:16]}", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def serving(runs_dir: Path, target: Target, engine: str | None = None) -> Server | None:
    """A live server that answers for the target (on that engine, if one is named)."""
    for server in list_servers(runs_dir, live_only=True):
        if target.key in server.serves and (not engine or engine == "auto" or server.engine == engine):
            return server
    return None


async def ensure_server(target: Target, runs_dir: Path, *, engine: str | None = None, port: int | None = None,
                        timeout: float = 900.0, say: Say | None = None) -> tuple[Server, bool]:
    """A ready server for the target: one already serving it, else a new one. Returns (server, started)."""
    say = say or (lambda message: None)
    lock = _key_lock(runs_dir, target.key)
    await asyncio.to_thread(lock.__enter__)
    try:
        existing = serving(runs_dir, target, engine)
        if existing is not None and existing.state == READY and not await answers(existing):
            say(f"{existing.server_id} does not answer: stopping it and starting another")
            await asyncio.to_thread(stop_server, existing)
            existing = None
        if existing is None:
            chosen = choose_engine(target, engine)
            weights = await weights_for(target, chosen, say)
            server = launch_server(target, chosen, weights, runs_dir, port)
            say(f"starting {chosen.title} for {target.label} at {server.url} ({server.server_id})")
            started = True
        else:
            server, started = existing, False
            say(f"reusing {server.server_id} ({server.engine}) at {server.url}")
    finally:
        lock.__exit__(None, None, None)
    ready = await wait_ready(server, timeout, say)
    ready.model_id = ready.model_for(target.key) or ready.model_id
    return ready, started
