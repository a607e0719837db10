"""Steps/s of `trainers.sft` against a plain TRL SFTTrainer script, same model, data and settings, one run.

The plain script is what a user would write: library defaults, LoRA on all
linear layers, no tuning. It runs twice: in the plain environment, and in the
environment our launcher gives the trainer (OpenMP threads that sleep instead
of spinning). Ratios above 1.0 mean our trainer is faster.

    python benchmarks/trainer_overhead.py [--steps 30] [--model PATH] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synaptic_tui.jobs import trainer_environment  # noqa: E402
from synaptic_tui.runs import create_run, read_status  # noqa: E402

DATA = REPO / "examples" / "data" / "sft_tool_calls.jsonl"

PLAIN = r'''
import sys, time, json
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_path, data_path, out_dir, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForCausalLM.from_pretrained(model_path)
dataset = load_dataset("json", data_files=data_path, split="train")
args = SFTConfig(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=2, learning_rate=5e-4,
                 logging_steps=1, save_strategy="no", report_to=[], max_length=2048,
                 # The one change TRL's own error message asks for on a machine without a GPU.
                 use_cpu=not torch.cuda.is_available())
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                     peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
result = trainer.train()
print("RESULT", json.dumps({"steps_per_second": result.metrics["train_steps_per_second"]}))
'''


def run_ours(model: Path, steps: int, runs_dir: Path, platform: str) -> float:
    config = {"method": "sft", "platform": platform, "engine": "transformers",
              "model": {"name": str(model), "max_seq_length": 2048},
              "dataset": {"path": str(DATA)}, "lora": {"r": 8, "alpha": 16, "target_modules": "all-linear"},
              "training": {"max_steps": steps, "per_device_train_batch_size": 2, "learning_rate": 5e-4,
                           "logging_steps": 1, "save_steps": 100000, "save_total_limit": 1}}
    run_dir = create_run(runs_dir, config, "sft", "bench")
    env = trainer_environment(config)
    subprocess.run([sys.executable, "-m", "trainers.sft", "--run-dir", str(run_dir)], env=env, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    assert read_status(run_dir).state == "succeeded", (run_dir / "train.log")
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "train_steps_per_second" in line][-1]
    return final["train_steps_per_second"]


def run_plain(model: Path, steps: int, work: Path, env: dict[str, str]) -> float:
    out = subprocess.run([sys.executable, "-c", PLAIN, str(model), str(DATA), str(work / "plain"), str(steps)],
                         env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))["steps_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a local model (default: build the demo model)")
    parser.add_argument("--platform", default="auto", help="auto, cpu or cuda (for our trainer)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the built model (GPU: try 1024)")
    parser.add_argument("--layers", type=int, default=2, help="layers of the built model (GPU: try 16)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from trainers.demo_model import build_demo_model

            model, _ = build_demo_model(work / "demo-model", hidden_size=args.hidden, num_layers=args.layers)
        marker = Path(model) / "synaptic_demo.json"
        params = json.loads(marker.read_text())["parameters"] if marker.exists() else "?"
        plain_env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
        plain_env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        same_env = trainer_environment({"model": {"name": str(model)}, "dataset": {"path": str(DATA)}}, plain_env)
        ours, plain, plain_same = [], [], []
        for _ in range(args.repeats):  # interleaved, so drift hits all three alike
            ours.append(run_ours(model, args.steps, work / "runs", args.platform))
            plain.append(run_plain(model, args.steps, work, plain_env))
            plain_same.append(run_plain(model, args.steps, work, same_env))
    o, p, s = statistics.median(ours), statistics.median(plain), statistics.median(plain_same)
    print(f"model {params} parameters, {args.steps} steps, batch 2, median of {args.repeats}")
    print(f"trainers.sft:                         {o:.3f} steps/s")
    print(f"plain TRL script, plain environment:  {p:.3f} steps/s  -> ratio {o / p:.2f}x (goal >= 1.0x)")
    print(f"plain TRL script, our environment:    {s:.3f} steps/s  -> ratio {o / s:.2f}x (goal >= 0.97x)")


if __name__ == "__main__":
    main()
