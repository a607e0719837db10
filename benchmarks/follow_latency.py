"""How fast the run view follows a run, and what a huge metrics file costs it.

1. A writer thread appends a metrics line every 100 ms (and a checkpoint every
   10th line) while the app runs headless with the run view open; for each
   line, the time from the write to the table cell showing it. Goal p95 <= 100 ms.
2. A 1,000,000-line metrics.jsonl is loaded, then 100 lines are appended: the
   time to process the append, and the process's RSS before and after loading
   (no copy of the file's text is kept). Goal <= 20 ms for the append.

    python benchmarks/follow_latency.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synaptic_tui.app import SynapticApp  # noqa: E402
from synaptic_tui.follow import JsonlFollower  # noqa: E402
from synaptic_tui.monitor import RunMetrics  # noqa: E402
from synaptic_tui.runs import RunStatus, write_status  # noqa: E402
from synaptic_tui.services import Services  # noqa: E402
from synaptic_tui.widgets.checkpoint_table import CheckpointTable  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_run(root: Path) -> Path:
    run_dir = root / "20261122-120000-sft-bench"
    run_dir.mkdir(parents=True)
    (run_dir / "run.yaml").write_text("method: sft\ntraining:\n  save_steps: 10\n")
    write_status(run_dir, RunStatus(state="running", method="sft", model="bench", max_steps=100000))
    (run_dir / "checkpoints").mkdir()
    return run_dir


async def live_latency(seconds: float) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_run(Path(tmp) / "runs")
        written: dict[int, float] = {}
        seen: dict[int, float] = {}
        stop = threading.Event()

        def writer() -> None:
            step = 0
            with open(run_dir / "metrics.jsonl", "a") as handle:
                while not stop.is_set():
                    step += 1
                    if step % 10 == 0:
                        (run_dir / "checkpoints" / f"checkpoint-{step}").mkdir()
                    handle.write(json.dumps({"step": step, "time": time.time(), "loss": 1000.0 + step}) + "\n")
                    handle.flush()
                    written[step] = time.perf_counter()
                    time.sleep(0.1)

        app = SynapticApp(Services.create(run_dir.parent))
        async with app.run_test(size=(120, 40)) as pilot:
            app.show_run(run_dir)
            await pilot.pause(0.3)
            table = app.screen.query_one(CheckpointTable)
            thread = threading.Thread(target=writer)
            thread.start()
            deadline = time.perf_counter() + seconds
            # Each checkpoint row's loss cell shows the step it was written at (loss = 1000 + step).
            while time.perf_counter() < deadline:
                for name, cells in list(table.rows_by_name.items()):
                    step = int(name.split("-")[1])
                    if step not in seen and cells[3] == f"{1000.0 + step:.4f}":
                        seen[step] = time.perf_counter()
                await asyncio.sleep(0.002)
            stop.set()
            thread.join()
        return [(seen[s] - written[s]) * 1000 for s in seen if s in written]


def big_file(lines: int) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.jsonl"
        with open(path, "w") as handle:
            for step in range(1, lines + 1):
                handle.write(json.dumps({"step": step, "epoch": step / 1000, "time": 1e9 + step, "loss": 1.0 / step,
                                         "learning_rate": 2e-4, "grad_norm": 0.5}) + "\n")
        before = rss_mb()
        follower, metrics = JsonlFollower(path), RunMetrics("sft", save_steps=500)
        start = time.perf_counter()
        more = True
        while more:  # as the run view does: a chunk at a time, nothing kept but the metrics
            records, _, more = follower.poll_records()
            metrics.add(records)
        del records
        load = time.perf_counter() - start
        loaded = rss_mb()
        with open(path, "a") as handle:
            for step in range(lines + 1, lines + 101):
                handle.write(json.dumps({"step": step, "loss": 0.1}) + "\n")
        start = time.perf_counter()
        metrics.add(follower.poll_records()[0])
        append = (time.perf_counter() - start) * 1000
        assert metrics.last_step == lines + 100
        return load, append, before, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    latencies = asyncio.run(live_latency(args.seconds))
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)]
    print(f"live: {len(latencies)} checkpoint rows over {args.seconds:.0f} s, write -> cell shown: "
          f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {latencies[-1]:.0f} ms (goal p95 <= 100 ms)")
    load, append, before, loaded = big_file(args.lines)
    print(f"big file: {args.lines:,} lines loaded in {load:.1f} s; appending 100 lines processed in "
          f"{append:.1f} ms (goal <= 20 ms); RSS {before:.0f} MB before, {loaded:.0f} MB after loading")


if __name__ == "__main__":
    main()
