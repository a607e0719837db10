"""One trainer per run: an exclusive flock on runs/<id>/run.lock.

The launcher takes the lock before it starts a trainer and hands the locked
file to it (the open file stays locked for as long as any process holds it),
so the trainer holds the lock for its whole life and the kernel drops it when
the trainer exits, however it exits. A second launch, resume or queue start
finds the lock taken and is told who holds it. The file's text names the
holder for that message; the lock itself, not the text, is the truth.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

LOCK_NAME = "run.lock"
# The trainer finds the locked file it inherited from the launcher under this descriptor number.
FD_ENV = "SYNAPTIC_RUN_LOCK_FD"


class RunLocked(Exception):
    """Another process holds the run's lock: a trainer is running or being started."""


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def holder(run_dir: Path) -> dict[str, Any]:
    """Who last took the lock, as it wrote itself down ({} when that cannot be read)."""
    try:
        data = json.loads(lock_path(run_dir).read_text(encoding="utf-8")[:4096])
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _locked_message(run_dir: Path) -> str:
    who = holder(run_dir)
    pid, host, since = who.get("pid"), who.get("host"), who.get("since")
    role = "a launcher starting its trainer" if who.get("role") == "launcher" else "trainer"
    parts = [f"{role} pid {pid}" if isinstance(pid, int) else None, f"on {host}" if isinstance(host, str) else None,
             f"since {since}" if isinstance(since, str) else None]
    described = " ".join(p for p in parts if p)
    return (f"{Path(run_dir).name} already has a trainer" + (f" ({described})" if described else "")
            + ": only one trainer may write a run; wait for it to end or cancel it")


def _write_holder(fd: int, **info: Any) -> None:
    text = json.dumps({"host": socket.gethostname(), **info}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8"), 0)


def take(run_dir: Path, **info: Any) -> int:
    """Lock the run for a trainer about to start; returns the locked descriptor, or raises RunLocked."""
    from synaptic_tui.runs import utc_now

    fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLocked(_locked_message(run_dir)) from None
    except BaseException:
        os.close(fd)
        raise
    _write_holder(fd, pid=os.getpid(), since=utc_now(), **info)
    return fd


def note_holder(fd: int, run_dir: Path, **info: Any) -> None:
    """Say who holds the lock now (the trainer the launcher started), keeping when it was taken."""
    since = holder(run_dir).get("since")
    _write_holder(fd, since=since, **info)


def inherited(run_dir: Path) -> int | None:
    """The locked descriptor the launcher handed this process, if it did and it is this run's lock file."""
    value = os.environ.get(FD_ENV, "")
    if not value.isdigit():
        return None
    fd = int(value)
    try:
        mine, wanted = os.fstat(fd), os.stat(lock_path(run_dir))
    except OSError:
        return None
    if (mine.st_dev, mine.st_ino) != (wanted.st_dev, wanted.st_ino):
        return None  # the number was passed on to a process that did not inherit the file (a DDP worker)
    try:
        # The same open file: re-locking it succeeds at once and proves it is the one holding the lock.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return None
    return fd


def held(run_dir: Path) -> bool | None:
    """Whether some process holds the lock; None when the run has no lock file (launched before locks,
    or not launched yet). A short shared lock is the probe: it never blocks, and a launcher that meets
    it retries (see `take_retrying`)."""
    try:
        fd = os.open(lock_path(run_dir), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return False


def take_retrying(run_dir: Path, attempts: int = 5, exiting: Callable[[dict[str, Any]], bool] | None = None,
                  patience: float = 30.0, **info: Any) -> int:
    """`take`, tolerant of a reader's momentary probe (`held`), never of a real holder, except one that
    `exiting(holder)` says is on its way out (a trainer that wrote its final state): that one is
    waited for, up to `patience` seconds."""
    import time

    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        attempt += 1
        try:
            return take(run_dir, **info)
        except RunLocked:
            # A trainer's lock is held for seconds at least; a probe for microseconds.
            if attempt < attempts and not _holder_alive(run_dir):
                time.sleep(0.02)
                continue
            if exiting is None or time.monotonic() >= deadline or not exiting(holder(run_dir)):
                raise
            time.sleep(0.2)


def _holder_alive(run_dir: Path) -> bool:
    pid = holder(run_dir).get("pid")
    if not isinstance(pid, int) or pid <= 1:
        return True  # cannot tell: treat the lock as really held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
