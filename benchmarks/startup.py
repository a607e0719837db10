"""Start-up time: spawn to home screen ready, headless, against a bare Textual app with one DataTable.

Both are measured in this run, interleaved, median of N spawns each; the
result is printed as a ratio (goal: <= 1.3x). Usage: python benchmarks/startup.py [N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BARE = """
from textual.app import App
from textual.widgets import DataTable, Footer, Header

class Bare(App):
    def compose(self):
        yield Header()
        yield DataTable()
        yield Footer()

async def ready(pilot):
    await pilot.pause()
    print("READY", flush=True)
    pilot.app.exit()

Bare().run(headless=True, auto_pilot=ready)
"""

OURS = """
import sys
from pathlib import Path
from synaptic_tui.app import SynapticApp
from synaptic_tui.services import Services
from synaptic_tui.screens.home import HomeScreen
from synaptic_tui.widgets.runs_table import RunsTable

async def ready(pilot):
    # Same wait as the bare app: one idle pause. The home screen lists runs
    # synchronously on mount, so by then its table holds its rows.
    await pilot.pause()
    app = pilot.app
    assert isinstance(app.screen, HomeScreen) and app.screen.query_one(RunsTable).columns
    print("READY", flush=True)
    app.exit()

SynapticApp(Services.create(Path(sys.argv[1]))).run(headless=True, auto_pilot=ready)
"""


def spawn(code: str, *args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, cwd=REPO)
    for line in proc.stdout:
        if line.startswith("READY"):
            elapsed = time.perf_counter() - start
            break
    else:
        raise RuntimeError(f"probe exited without READY (code {proc.wait()})")
    proc.wait()
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    with tempfile.TemporaryDirectory() as runs:
        spawn(BARE), spawn(OURS, runs)  # warm the OS file cache for both
        bare, ours = [], []
        for _ in range(n):
            bare.append(spawn(BARE))
            ours.append(spawn(OURS, runs))
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"bare Textual app + DataTable: median {b * 1000:.0f} ms over {n} spawns")
    print(f"synaptic-tui home screen:     median {o * 1000:.0f} ms over {n} spawns")
    print(f"ratio: {o / b:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
