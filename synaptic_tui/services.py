"""The services the app is built around, injected so tests can run the real app on temp dirs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

if TYPE_CHECKING:
    from synaptic_tui.doctor import Check
    from synaptic_tui.preflight import PreflightReport


async def _real_doctor(runs_dir: Path) -> list[Check]:
    from synaptic_tui.doctor import run_checks

    return await run_checks(runs_dir)


def _real_preflight(config: dict, runs_dir: Path) -> PreflightReport:
    from synaptic_tui.jobs import ensure_embedded_model
    from synaptic_tui.preflight import run_preflight

    ensure_embedded_model(config)
    return run_preflight(config, runs_dir)


@dataclass
class Services:
    runs_dir: Path
    # How often run lists re-read the runs dir.
    refresh_seconds: float = 2.0
    doctor: Callable[[Path], Awaitable[list[Check]]] = field(default=_real_doctor)
    # Blocking (it builds the demo model on first use and counts tokens in a child process): run it in a thread.
    preflight: Callable[[dict, Path], PreflightReport] = field(default=_real_preflight)

    @classmethod
    def create(cls, runs_dir: Path, **kwargs) -> Services:
        return cls(runs_dir=Path(runs_dir), **kwargs)
