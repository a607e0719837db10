"""Training throughput of our MLX trainer against `python -m mlx_lm lora`, same model, data and settings, in one run.

Both sides are timed the same way: wall time of one process that loads the
model, trains and exits (ours: `python -m trainers.mlx_lora` on a run
directory, with the environment `launch_training` gives it, no CLI or
pre-flight in front; theirs: `python -m mlx_lm lora --train`). Each side
trains for A and for B iterations; start-up, model loading and mlx-lm's fixed
evaluations cost the same in both of a side's runs, so (B - A) / (t_B - t_A)
is its steady-state rate in iterations per second. B defaults to one epoch:
the two trainers shuffle and bucket rows differently, and a step's cost grows
with its batch's length, so only over a whole epoch do both train on the same
tokens. The four runs of a repeat are interleaved (the order rotates each
repeat) and the rates are the median over the repeats. Nothing is parsed from
mlx-lm's printed table. Goal: ours >= 0.97x.

    python benchmarks/mlx_throughput.py [--short 1] [--long STEPS (default: one epoch)] [--repeats 2] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO / "examples" / "data" / "sft_tool_calls.jsonl"


def demo_model(work: Path) -> Path:
    path = work / "demo-model"
    subprocess.run([sys.executable, "-m", "trainers.demo_model", str(path)], check=True, cwd=REPO,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    return path


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                         env={**(env or os.environ), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - started


def ours(model: Path, iters: int, work: Path, args) -> float:
    from synaptic_tui.jobs import trainer_environment
    from synaptic_tui.runs import create_run, read_status

    config = {"method": "sft", "platform": "mlx", "model": {"name": str(model), "max_seq_length": args.max_length},
              "dataset": {"path": str(DATA), "test_size": 0},
              "lora": {"r": 8, "alpha": 16, "num_layers": -1},
              "training": {"max_steps": iters, "per_device_train_batch_size": args.batch_size,
                           "learning_rate": 1e-4, "logging_steps": 1, "save_steps": 10**6,
                           "lr_scheduler_type": "constant", "seed": 42}}
    run_dir = create_run(work / "runs", config, "sft", "bench")
    seconds = timed([sys.executable, "-m", "trainers.mlx_lora", "--run-dir", str(run_dir)], REPO,
                    trainer_environment(config))
    if read_status(run_dir).state != "succeeded":
        raise SystemExit(f"our trainer did not succeed: {(run_dir / 'train.log').read_text()[-3000:]}")
    return seconds


def reference(model: Path, iters: int, work: Path, args) -> float:
    data = work / "mlx-data"
    if not data.exists():
        data.mkdir()
        rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
        (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (data / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[: args.batch_size]))
    return timed([sys.executable, "-m", "mlx_lm", "lora", "--model", str(model), "--train", "--data", str(data),
                  "--iters", str(iters), "--batch-size", str(args.batch_size), "--num-layers", "-1",
                  "--learning-rate", "1e-4", "--steps-per-report", "1", "--steps-per-eval", str(10**6),
                  "--val-batches", "1", "--save-every", str(10**6), "--max-seq-length", str(args.max_length),
                  "--mask-prompt", "--adapter-path", str(work / f"mlx-adapters-{iters}"), "--seed", "42"], work)


def tokens_per_batch(model: Path, batch_size: int) -> float:
    """Mean tokens in a batch of the data as both trainers tokenize it (the chat template, tools included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tools=r.get("tools"), tokenize=True,
                                                 return_dict=True)["input_ids"]) for r in rows]
    return batch_size * sum(lengths) / len(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=1, help="iterations of the short runs (A)")
    parser.add_argument("--long", type=int, help="iterations of the long runs (B; default: one epoch)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--model", type=Path, help="model directory (default: build the demo model)")
    args = parser.parse_args()
    rows = sum(1 for line in DATA.read_text().splitlines() if line.strip())
    args.long = args.long or rows // args.batch_size
    sides = {"ours (trainers.mlx_lora)": ours, "python -m mlx_lm lora": reference}
    names = list(sides)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = (args.model or demo_model(work)).resolve()
        for repeat in range(args.repeats):
            runs = [(name, iters) for name in names for iters in (args.short, args.long)]
            runs = runs[repeat % len(runs):] + runs[:repeat % len(runs)]
            seconds = {(name, iters): sides[name](model, iters, work, args) for name, iters in runs}
            for name in names:
                short, long = seconds[(name, args.short)], seconds[(name, args.long)]
                rates[name].append((args.long - args.short) / (long - short))
                print(f"repeat {repeat + 1}: {name:<26} {args.short} its {short:6.1f} s, {args.long} its {long:6.1f} s",
                      flush=True)
        per_batch = tokens_per_batch(model, args.batch_size)
    print(f"{'trainer':<26} {'its/s':>7} {'tokens/s':>9}  (median of {args.repeats} interleaved repeats)")
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, rate in median.items():
        print(f"{name:<26} {rate:>7.3f} {rate * per_batch:>9.0f}")
    ours_rate, ref_rate = median.values()
    print(f"ours / mlx_lm lora = {ours_rate / ref_rate:.2f}x (goal >= 0.97x); {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f} at the end, batch {args.batch_size}, {per_batch:.0f} tokens per batch")
    # Each repeat's own pair: on a shared machine these say more than the medians' ratio.
    pairs = [a / b for a, b in zip(*rates.values())]
    print(f"  per repeat: {', '.join(f'{r:.2f}x' for r in pairs)}")


if __name__ == "__main__":
    main()
