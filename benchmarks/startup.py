"""Start-up time: spawn to home screen ready, headless, against a bare Textual app with one DataTable.

Both are measured in this run, interleaved, median of N (>= 7) spawns each;
the home screen lists a runs dir of 30 finished runs and a legacy tree (it
shows the 20 newest). The bare app's table gets as many rows as the home
screen's table holds, counted in this run, with the same columns and widths.
The result is printed as a ratio (goal: <= 1.3x). Usage: python benchmarks/startup.py [N]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The bare app's table holds as many rows as the home screen's (counted by OURS), in the same
# columns and widths, so the ratio measures what the app adds, not the cost of rows both must draw.
BARE = """
import sys
from textual.app import App
from textual.widgets import DataTable, Footer, Header

COLUMNS = (("Run", 30), ("Method", 6), ("Engine", 12), ("Model", 14), ("State", 9), ("Step", 9), ("Started", 11),
           ("Duration", 8))

class Bare(App):
    def compose(self):
        yield Header()
        yield DataTable()
        yield Footer()

    def on_mount(self):
        table = self.query_one(DataTable)
        for label, width in COLUMNS:
            table.add_column(label, width=width)
        table.add_rows([(f"20261110-{i:02d}0000-sft-demo-model", "sft", "transformers", "demo", "succeeded",
                         "30/30", "11-10 10:00", "5m00s") for i in range(int(sys.argv[1]))])

async def ready(pilot):
    await pilot.pause()
    print("READY", pilot.app.query_one(DataTable).row_count, flush=True)
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
    table = app.screen.query_one(RunsTable)
    assert isinstance(app.screen, HomeScreen) and table.columns
    print("READY", table.row_count, flush=True)
    app.exit()

SynapticApp(Services.create(Path(sys.argv[1]))).run(headless=True, auto_pilot=ready)
"""


def spawn(code: str, *args: str) -> tuple[float, int]:
    """(seconds from spawn to ready, rows in its table)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, cwd=REPO)
    for line in proc.stdout:
        if line.startswith("READY"):
            elapsed = time.perf_counter() - start
            rows = int(line.split()[1])
            break
    else:
        raise RuntimeError(f"probe exited without READY (code {proc.wait()})")
    proc.wait()
    return elapsed, rows


def seed_runs(runs: Path, count: int) -> None:
    """A lived-in runs dir: finished runs with checkpoints as our trainers leave them, and a legacy tree."""
    for i in range(count):
        method = "kto" if i % 3 == 0 else "sft"
        run = runs / f"202611{10 + i // 24:02d}-{i % 24:02d}0000-{method}-demo-model"
        for step in (10, 20, 30):
            (run / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        (run / "final").mkdir()
        (run / "run.yaml").write_text(f"method: {method}\nplatform: cpu\nmodel:\n  name: demo\n")
        status = {"state": "succeeded", "step": 30, "max_steps": 30, "engine": "transformers", "method": method,
                  "platform": "cpu", "model": "demo", "dataset": "sft_tool_calls.jsonl",
                  "started_at": f"2026-11-{10 + i // 24:02d}T{i % 24:02d}:00:00Z",
                  "ended_at": f"2026-11-{10 + i // 24:02d}T{i % 24:02d}:05:00Z"}
        (run / "status.json").write_text(json.dumps(status))
    legacy = runs / "sft_output_rtx3090" / "20251101_120000"
    (legacy / "logs").mkdir(parents=True)
    (legacy / "logs" / "training_20251101_120000.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (legacy / "final_model").mkdir()


RUNS = 30


def main() -> None:
    # At least 7 spawns each: fewer make the median a coin toss on a busy machine.
    n = max(7, int(sys.argv[1]) if len(sys.argv) > 1 else 7)
    with tempfile.TemporaryDirectory() as runs:
        seed_runs(Path(runs), RUNS)
        # Warms the OS file cache for both, and counts the rows the home screen shows.
        _, rows = spawn(OURS, runs)
        spawn(BARE, str(rows))
        bare, ours = [], []
        for _ in range(n):
            for name, (seconds, shown) in (("bare", spawn(BARE, str(rows))), ("ours", spawn(OURS, runs))):
                if shown != rows:
                    raise SystemExit(f"{name} showed {shown} rows, not {rows}: the comparison would not be like for like")
                (bare if name == "bare" else ours).append(seconds)
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"bare Textual app + DataTable: median {b * 1000:.0f} ms over {n} spawns ({rows} rows)")
    print(f"synaptic-tui home screen:     median {o * 1000:.0f} ms over {n} spawns ({rows} rows of {RUNS} runs "
          "+ a legacy tree)")
    print(f"ratio: {o / b:.2f}x (goal <= 1.3x); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
