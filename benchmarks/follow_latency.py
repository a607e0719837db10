"""How fast the run view follows a run, and what a huge metrics file costs it.

1. A writer thread appends a metrics line every 100 ms (and a checkpoint every
   10th line) while the app runs headless with the run view open; for every
   line, the time from the write to the first frame that draws it: the
   compositor's update turned into the text a terminal would be sent (the
   `final` row shows the latest metrics, so each line changes a cell on screen).
   Goal p95 <= 100 ms.
2. The run view opens a run whose metrics.jsonl has 1,000,000 lines; then 100
   lines are appended and the view's whole refresh (read, parse, checkpoints,
   table, curves) is timed. Goal <= 20 ms. RSS before opening and after loading
   is printed beside the file's size: the view keeps no copy of the text.

    python benchmarks/follow_latency.py [--seconds 30] [--lines 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from textual._compositor import CompositorUpdate  # noqa: E402

from synaptic_tui.app import SynapticApp  # noqa: E402
from synaptic_tui.runs import RunStatus, write_status  # noqa: E402
from synaptic_tui.services import Services  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LOSS = re.compile(r"\b(1\d{3,})\.0000\b")  # loss = 1000 + step, as the table formats it


class FrameTimedApp(SynapticApp):
    """The app, noting when each frame is drawn and the newest step it shows.

    A headless app composes every update but sends it nowhere; this renders each
    update to the text a terminal would receive (the work a real frame does) and
    reads the loss cells out of it. `_display` is Textual's private hook for that
    one step: overridden here, in a benchmark, never in the product.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frame_console = Console(width=120, height=40, force_terminal=True, color_system="truecolor")
        self.shown_at: dict[int, float] = {}  # newest step drawn -> when it first was

    def _display(self, screen, renderable) -> None:
        if isinstance(renderable, CompositorUpdate):
            text = ANSI.sub("", renderable.render_segments(self.frame_console))
            now = time.perf_counter()
            steps = [int(m.group(1)) - 1000 for m in LOSS.finditer(text)]
            if steps:
                self.shown_at.setdefault(max(steps), now)
        super()._display(screen, renderable)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_run(root: Path) -> Path:
    run_dir = root / "20261122-120000-sft-bench"
    run_dir.mkdir(parents=True)
    (run_dir / "run.yaml").write_text("method: sft\ntraining:\n  save_steps: 10\n")
    write_status(run_dir, RunStatus(state="running", method="sft", model="bench", max_steps=10_000_000))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "final").mkdir()  # its row shows the latest metrics: every line changes a cell
    return run_dir


async def live_latency(seconds: float) -> tuple[dict[str, list[float]], int]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_run(Path(tmp) / "runs")
        written: dict[int, float] = {}
        seen: dict[int, float] = {}
        read_at: dict[int, float] = {}
        stop = threading.Event()

        def writer() -> None:
            step = 0
            with open(run_dir / "metrics.jsonl", "a") as handle:
                while not stop.is_set():
                    step += 1
                    if step % 10 == 0:
                        (run_dir / "checkpoints" / f"checkpoint-{step}").mkdir()
                    written[step] = time.perf_counter()
                    handle.write(json.dumps({"step": step, "time": time.time(), "loss": 1000.0 + step}) + "\n")
                    handle.flush()
                    time.sleep(0.1)

        app = FrameTimedApp(Services.create(run_dir.parent))
        async with app.run_test(size=(120, 40)) as pilot:
            app.show_run(run_dir)
            await pilot.pause(0.3)
            screen = app.screen
            refresh = screen.refresh_files

            def timed_refresh() -> None:  # when the view has read each line (the watcher calls it by name)
                refresh()
                read_at.setdefault(screen.metrics.last_step, time.perf_counter())

            screen.refresh_files = timed_refresh
            thread = threading.Thread(target=writer)
            thread.start()
            await asyncio.sleep(seconds)
            stop.set()
            thread.join()
            await pilot.pause(0.5)
        # Lines that arrived together are read and drawn together: each counts as read (drawn) by the first
        # refresh (frame) that reads (shows) it or a later line.
        def first_at(times: dict[int, float], step: int) -> float | None:
            later = [t for shown, t in times.items() if isinstance(shown, int) and shown >= step]
            return min(later) if later else None

        for step in sorted(written):
            if (drawn := first_at(app.shown_at, step)) is not None:
                seen[step] = drawn
        read = {s: first_at(read_at, s) for s in seen}
        return {"write to frame": [(seen[s] - written[s]) * 1000 for s in seen],
                "write to read": [(read[s] - written[s]) * 1000 for s in seen if read[s] is not None],
                "read to frame": [(seen[s] - read[s]) * 1000 for s in seen if read[s] is not None]}, len(written)


async def big_file(lines: int) -> tuple[float, float, float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_run(Path(tmp) / "runs")
        path = run_dir / "metrics.jsonl"
        with open(path, "w") as handle:
            for step in range(1, lines + 1):
                handle.write(json.dumps({"step": step, "epoch": step / 1000, "time": 1e9 + step, "loss": 1.0 / step,
                                         "learning_rate": 2e-4, "grad_norm": 0.5}) + "\n")
        for step in (lines - 20, lines - 10, lines):
            (run_dir / "checkpoints" / f"checkpoint-{step}").mkdir()
        size_mb = path.stat().st_size / 2**20
        app = SynapticApp(Services.create(run_dir.parent))
        async with app.run_test(size=(120, 40)) as pilot:
            before = rss_mb()
            start = time.perf_counter()
            app.show_run(run_dir)
            await pilot.pause(0.1)
            screen = app.screen
            # The view reads a big backlog a chunk per turn of the event loop.
            while screen.metrics.last_step < lines:
                await pilot.pause(0.05)
            load = time.perf_counter() - start
            await pilot.pause(0.5)
            loaded = rss_mb()
            with open(path, "a") as handle:
                for step in range(lines + 1, lines + 101):
                    handle.write(json.dumps({"step": step, "time": 1e9 + step, "loss": 0.1}) + "\n")
            start = time.perf_counter()
            screen.refresh_files()  # everything the view does for an append, at once
            append = (time.perf_counter() - start) * 1000
            assert screen.metrics.last_step == lines + 100
        return load, append, before, loaded, size_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    latencies, written = asyncio.run(live_latency(args.seconds))
    drawn = latencies["write to frame"]
    p50, p95 = statistics.median(drawn), statistics.quantiles(drawn, n=100)[94]
    print(f"live: {len(drawn)} of {written} lines drawn over {args.seconds:.0f} s, write -> frame drawn: "
          f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {max(drawn):.0f} ms (goal p95 <= 100 ms); "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    for part in ("write to read", "read to frame"):
        values = latencies[part]
        print(f"  of which {part}: p50 {statistics.median(values):.0f} ms, "
              f"p95 {statistics.quantiles(values, n=100)[94]:.0f} ms")
    load, append, before, loaded, size_mb = asyncio.run(big_file(args.lines))
    print(f"big file: {args.lines:,} lines ({size_mb:.0f} MB) loaded by the run view in {load:.1f} s; "
          f"100 lines appended, the view's refresh took {append:.1f} ms (goal <= 20 ms); "
          f"RSS {before:.0f} MB before opening, {loaded:.0f} MB after loading (+{loaded - before:.0f} MB "
          f"for a {size_mb:.0f} MB file)")


if __name__ == "__main__":
    main()
