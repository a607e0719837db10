"""Eval wall time at concurrency 1 and 8: 64 cases through the real runner, measured in one run.

1. loopback: tests/ollama_server.py answering every chat after a fixed 50 ms,
   in its own process (in ours, its threads would fight the runner for the
   GIL); it listens with a backlog above the stdlib's 5 (eight connects at
   once would overflow it and the kernel's SYN retry adds a whole second). 64 cases one
   at a time take >= 3.2 s; eight in flight should take ~1/8. Goal: c1/c8 >= 6x.
2. mlx_lm.server serving the demo model (random weights, few max tokens).
   Each case is ~1,600 prompt tokens of tool schemas, so the time is prefill,
   compute-bound on the CPU whether the server takes requests one at a time or
   batches them: its ratio shows what the server and machine allow, not what
   the runner does. Informative only, no goal.

A case that errors (timeout, refused, malformed) ends the benchmark with the
reason instead of a ratio: errored cases cost no server time and would make
either level look faster than it is.

    python benchmarks/eval_concurrency.py [--cases 64] [--model PATH] [--max-tokens 8] [--skip-mlx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evaluator.prompts import load_prompt_set  # noqa: E402
from evaluator.runner import create_eval, new_settings, preflight, read_results, run_eval  # noqa: E402
from synaptic_tui.serving import mlx_server  # noqa: E402

PROMPTS = REPO / "examples" / "prompts" / "tool_calling.json"
LEVELS = (1, 8)

LOOPBACK = """
import sys
sys.path.insert(0, sys.argv[1])
from ollama_server import OllamaServer
server = OllamaServer(reply={"content": "ok"}, latency=float(sys.argv[2])).start()
print(server.url, flush=True)
sys.stdin.read()  # serve until the benchmark closes our stdin
"""


def make_cases(count: int, path: Path) -> Path:
    """`count` cases cycling the shipped prompt set, ids made unique so the loader keeps them all."""
    base = json.loads(PROMPTS.read_text())
    cases = [{**base[i % len(base)], "id": f"{base[i % len(base)]['id']}-{i // len(base)}"} for i in range(count)]
    path.write_text(json.dumps(cases))
    return path


async def timed_eval(backend: str, url: str, model: str, prompts: Path, root: Path, concurrency: int,
                     max_tokens: int | None) -> tuple[float, int, int]:
    """Wall seconds of run_eval over every case, with the case count and the errors among them."""
    settings = new_settings(backend, model, load_prompt_set(prompts), url=url, concurrency=concurrency,
                            max_tokens=max_tokens, timeout=300)
    await preflight(settings)  # a missing server or model fails here, not as 64 recorded errors
    eval_dir = create_eval(settings, root)
    start = time.perf_counter()
    await run_eval(eval_dir)
    wall = time.perf_counter() - start
    records = read_results(eval_dir)
    errors = [r["error"] for r in records if r.get("error")]
    if errors or len(records) != len(settings.case_ids):
        # A case that errored took no (or a timeout's) time: a ratio over it would measure the faults.
        kinds = sorted({f"{e.get('kind')}: {e.get('message')}" for e in errors})[:3]
        raise SystemExit(f"{url} at concurrency {concurrency}: {len(errors)} of {len(settings.case_ids)} cases "
                         f"errored, {len(records)} recorded; no ratio is printed. " + "; ".join(kinds))
    return wall, len(records), 0


def measure(name: str, backend: str, url: str, model: str, prompts: Path, work: Path,
            max_tokens: int | None = None) -> dict[int, tuple[float, int, int]]:
    root = work / "evals"
    # One untimed case first, so connection set-up and the server's first-request costs
    # (mlx compiles and loads lazily) land on neither level.
    warm = make_cases(1, work / f"{name}-warm.json")
    asyncio.run(timed_eval(backend, url, model, warm, root / f"{name}-warm", 1, max_tokens))
    return {n: asyncio.run(timed_eval(backend, url, model, prompts, root / f"{name}-c{n}", n, max_tokens))
            for n in LEVELS}


def demo_model(work: Path) -> Path:
    # A subprocess, as the CLI and tests/conftest.py build it: torch stays out of the timing process.
    path = work / "demo-model"
    subprocess.run([sys.executable, "-m", "trainers.demo_model", str(path)], check=True, cwd=REPO,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    return path


def table(rows: list[tuple[str, dict[int, tuple[float, int, int]], str]]) -> None:
    print(f"{'backend':<28} {'concurrency':>11} {'wall s':>8} {'cases/s':>8} {'errors':>7}")
    for name, levels, _ in rows:
        for n, (wall, done, errors) in levels.items():
            print(f"{name:<28} {n:>11} {wall:>8.2f} {done / wall:>8.1f} {errors:>7}")
    for name, levels, note in rows:
        print(f"{name}: c1/c8 = {levels[1][0] / levels[8][0]:.2f}x ({note})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="loopback server's seconds per request")
    parser.add_argument("--model", type=Path, help="model for mlx_lm.server (default: build the demo model)")
    parser.add_argument("--max-tokens", type=int, default=8, help="most tokens per mlx answer")
    parser.add_argument("--skip-mlx", action="store_true", help="only the loopback server")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prompts = make_cases(args.cases, work / "cases.json")
        server = subprocess.Popen([sys.executable, "-c", LOOPBACK, str(REPO / "tests"), str(args.latency)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            levels = measure("loopback", "ollama", server.stdout.readline().strip(), "demo-model", prompts, work)
        finally:
            server.stdin.close()
            server.wait(10)
        rows.append((f"loopback ({args.latency * 1000:.0f} ms/request)", levels, "goal >= 6x"))
        if not args.skip_mlx:
            model = (args.model or demo_model(work)).resolve()
            with mlx_server(model, work / "mlx-server.log") as (url, model_id):
                levels = measure("mlx", "openai", url, model_id, prompts, work, args.max_tokens)
            rows.append((f"mlx_lm.server ({args.max_tokens} tokens)", levels,
                         "informative only: bound by the server's prefill on this machine, not by the runner"))
    print(f"{args.cases} cases per eval, wall time of run_eval; {os.cpu_count()} CPUs")
    table(rows)
    print(f"total benchmark time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
