"""Pre-flight's peak memory against the dataset: one 50 MB row, and 100k ordinary rows.

Each pre-flight runs in a fresh process (as `synaptic-tui train --dry-run` would) on the demo model;
its peak RSS and that of its token-counting child are read from getrusage. The base is the same
pre-flight on a three-row file, measured in this run. Goal: peak RSS under 3x the largest row plus
that base, whatever the file's size. Usage: python benchmarks/preflight_memory.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
SLACK = 10 * MB  # allocator noise between two runs of the same pre-flight

PREFLIGHT = """
import json, resource, sys, time
from synaptic_tui.preflight import run_preflight
config = json.loads(sys.argv[1])
started = time.perf_counter()
report = run_preflight(config, config["output"]["runs_dir"])
print(json.dumps({
    "seconds": time.perf_counter() - started,
    "self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "child_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "errors": [str(f) for f in report.errors], "rows": report.rows,
}))
"""


def row(answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": "Summarise the document."},
                                    {"role": "assistant", "content": answer}]}) + "\n"


def write_datasets(folder: Path, rows: int) -> dict[str, Path]:
    paths = {"3 rows (base)": folder / "tiny.jsonl", "one 50 MB row": folder / "huge-row.jsonl",
             f"{rows:,} ordinary rows": folder / "many-rows.jsonl"}
    ordinary = row("A short, ordinary answer of a few words, like most rows. " * 4)
    paths["3 rows (base)"].write_text(ordinary * 3)
    words = ("lorem ipsum dolor sit amet consectetur " * (50 * MB // 40 + 1))[: 50 * MB]
    paths["one 50 MB row"].write_text(ordinary + row(words) + ordinary)
    with paths[f"{rows:,} ordinary rows"].open("w") as handle:
        for _ in range(rows):
            handle.write(ordinary)
    return paths


def largest_row(path: Path) -> int:
    largest = 0
    with path.open("rb") as handle:
        for line in handle:
            largest = max(largest, len(line))
    return largest


def measure(path: Path, model: Path, runs_dir: Path) -> dict:
    config = {"method": "sft", "platform": "cpu", "model": {"name": str(model), "max_seq_length": 512},
              "dataset": {"path": str(path)}, "lora": {"r": 8}, "training": {"per_device_train_batch_size": 2},
              "output": {"runs_dir": str(runs_dir)}}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", PREFLIGHT, json.dumps(config)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--write", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        # In a child: Linux hands a process's peak RSS on to the children it forks, so the process that
        # measures must never have held the big files itself.
        paths = write_datasets(Path(args.write), args.rows)
        print(json.dumps({name: [str(p), p.stat().st_size, largest_row(p)] for name, p in paths.items()}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "demo-model"
        subprocess.run([sys.executable, "-m", "trainers.demo_model", str(model)], cwd=REPO, check=True,
                       capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        written = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--write", str(tmp)],
                                 check=True, capture_output=True, text=True)
        results = {}
        for name, (path, size, largest) in json.loads(written.stdout).items():
            results[name] = {**measure(Path(path), model, tmp / "runs"), "size": size, "largest": largest}
        base = results["3 rows (base)"]
        print(f"{'dataset':<24} {'file':>9} {'largest row':>12} {'app peak':>9} {'limit':>7} "
              f"{'token counter peak':>19} {'limit':>7} {'time':>7}")
        within = True
        for name, r in results.items():
            limits = [(base[key] * 1024 + SLACK + 3 * r["largest"]) / MB for key in ("self_kb", "child_kb")]
            ok = r["self_kb"] / 1024 <= limits[0] and r["child_kb"] / 1024 <= limits[1]
            within &= ok
            print(f"{name:<24} {r['size'] / MB:>7.1f}MB {r['largest'] / MB:>10.2f}MB {r['self_kb'] / 1024:>7.0f}MB "
                  f"{limits[0]:>5.0f}MB {r['child_kb'] / 1024:>17.0f}MB {limits[1]:>5.0f}MB {r['seconds']:>6.1f}s"
                  + ("" if ok else "  OVER") + (f"  ERRORS: {r['errors']}" if r["errors"] else ""))
        print(f"goal: peak RSS under 3x the largest row plus the base (the 3-row run's peak + {SLACK // MB} MB): "
              + ("met" if within else "NOT met"))

if __name__ == "__main__":
    main()
