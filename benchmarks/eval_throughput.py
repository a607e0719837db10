"""The same eval through each local serving engine available here, in one run: tokens/s and cases/s per engine.

A real small model (SmolLM2-135M-Instruct, built from its PyPI wheel as `synaptic-tui demo-model --real`
does), fixed cases (the first --cases of the shipped prompt set, sent without tools as the original tuner
did, so each prompt is a short chat), fixed --max-tokens at temperature 0 and --concurrency in flight.
Each engine is started through `synaptic-tui serve`'s code (synaptic_tui.servers), answers one untimed
case first (first-request costs: continuous batching's cache, mlx's lazy loading), then the timed eval
runs through the real runner; the server is stopped before the next engine starts, so no two compete
for the cores.

Goal on CPU: the engine `serve` picks by default >= 5x mlx_lm.server's tokens/s. On a CUDA machine the
same run adds vLLM, and prints vLLM against transformers serve.

    python benchmarks/eval_throughput.py [--model PATH] [--cases 8] [--max-tokens 48] [--concurrency 4]
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
from evaluator.runner import create_eval, new_settings, read_results, run_eval  # noqa: E402
from synaptic_tui.paths import real_model_dir  # noqa: E402
from synaptic_tui.servers import ServeError, choose_engine, engines  # noqa: E402
from synaptic_tui.servers.launch import ensure_server, stop_server  # noqa: E402
from synaptic_tui.servers.targets import model_target  # noqa: E402

PROMPTS = REPO / "examples" / "prompts" / "tool_calling.json"


def real_model(path: Path | None) -> Path:
    path = path or real_model_dir()
    if not (path / "config.json").exists():
        print(f"building SmolLM2-135M-Instruct into {path} (about a minute)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "trainers.real_model", str(path)], check=True, cwd=REPO,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    return path


def cases(count: int, path: Path) -> Path:
    path.write_text(json.dumps(json.loads(PROMPTS.read_text())[:count]))
    return path


async def timed_eval(url: str, model: str, prompts: Path, root: Path, args) -> dict:
    settings = new_settings("openai", model, load_prompt_set(prompts), url=url, concurrency=args.concurrency,
                            max_tokens=args.max_tokens, temperature=0.0, no_tools=True, timeout=900)
    eval_dir = create_eval(settings, root)
    start = time.perf_counter()
    await run_eval(eval_dir)
    wall = time.perf_counter() - start
    records = read_results(eval_dir)
    return {"wall": wall, "cases": len(records), "errors": sum(1 for r in records if r.get("error")),
            "tokens": sum(r.get("completion_tokens") or 0 for r in records)}


def measure(engine: str, model: Path, prompts: Path, warm: Path, work: Path, args) -> dict:
    runs_dir = work / f"runs-{engine}"
    runs_dir.mkdir()
    started = time.perf_counter()
    server, _ = asyncio.run(ensure_server(model_target(str(model)), runs_dir, engine=engine, timeout=1800))
    up = time.perf_counter() - started
    try:
        asyncio.run(timed_eval(server.url, server.model_id, warm, work / f"evals-{engine}-warm", args))
        result = asyncio.run(timed_eval(server.url, server.model_id, prompts, work / f"evals-{engine}", args))
    finally:
        stop_server(server)
    return {**result, "startup": up}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model directory (default: the embedded SmolLM2)")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--engines", help="comma-separated (default: every engine available here except "
                                          "llama.cpp, which needs a GGUF)")
    args = parser.parse_args()
    model = real_model(args.model).resolve()
    table = engines()
    names = args.engines.split(",") if args.engines else [n for n, e in table.items()
                                                          if n != "llama.cpp" and e.missing() is None]
    default = choose_engine(model_target(str(model))).name
    print(f"{model.name}: {args.cases} cases, {args.max_tokens} max tokens, concurrency {args.concurrency}, "
          f"temperature 0; {os.cpu_count()} CPUs, load average before {load_average()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prompts, warm = cases(args.cases, work / "cases.json"), cases(1, work / "warm.json")
        for name in names:
            try:
                results[name] = measure(name, model, prompts, warm, work, args)
            except ServeError as exc:
                print(f"{name}: could not serve: {exc}")
    print(f"{'engine':<14} {'startup s':>9} {'wall s':>8} {'tokens':>7} {'tokens/s':>9} {'cases/s':>8} {'errors':>7}")
    for name, r in results.items():
        print(f"{name:<14} {r['startup']:>9.1f} {r['wall']:>8.2f} {r['tokens']:>7} {r['tokens'] / r['wall']:>9.1f} "
              f"{r['cases'] / r['wall']:>8.2f} {r['errors']:>7}")

    def ratio(a: str, b: str, note: str) -> None:
        if a in results and b in results and results[b]["tokens"]:
            speed = lambda n: results[n]["tokens"] / results[n]["wall"]  # noqa: E731
            print(f"{a} / {b}: {speed(a) / speed(b):.2f}x tokens/s ({note})")

    ratio(default, "mlx", "serve's default engine here against mlx_lm.server; goal >= 5x on CPU")
    ratio("vllm", "transformers", "on a CUDA machine")
    print(f"load average after {load_average()}")


if __name__ == "__main__":
    main()
