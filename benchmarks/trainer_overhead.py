"""Steps/s of `trainers.sft` against a plain TRL SFTTrainer script: like for like, and as a user would write it.

Three sides, run interleaved (the order rotates each repeat, so drift and
position hit them alike), median of the repeats:

1. ours: `python -m trainers.sft` on a run directory, launched with the
   environment `launch_training` gives it.
2. plain TRL, our settings: a bare SFTConfig + SFTTrainer script given every
   setting our trainer uses (precision, no gradient checkpointing, assistant-only
   loss, optimizer, schedule, LoRA, seed), the same rows (our loader's dataset,
   saved to disk) and the same environment. The benchmark checks the settings
   against `trainers.engine.training_arguments` and the tokens trained against
   ours, and refuses to print a ratio if either differs. ours / this is the
   overhead of our trainer. Goal >= 0.97x.
3. plain TRL, TRL's defaults: what a user would write (LoRA on all linear
   layers, `load_dataset("json")`, nothing else set), in a plain environment.
   TRL defaults to gradient checkpointing and bf16 (slow on a CPU): this ratio
   says what our settings buy, not what our trainer costs. No goal.

    python benchmarks/trainer_overhead.py [--steps 30] [--repeats 3] [--model PATH]
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
BATCH, LR, RANK, ALPHA, MAX_LENGTH = 2, 5e-4, 8, 16, 2048
# SFTConfig fields compared between our trainer's arguments and the plain script's.
COMPARED = ("learning_rate", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
            "lr_scheduler_type", "weight_decay", "max_grad_norm", "optim", "seed", "bf16", "fp16", "use_cpu",
            "dataloader_num_workers", "gradient_checkpointing", "warmup_steps")

# Every setting our trainer uses for this benchmark's config, written out as a user would.
PLAIN_OURS = r'''
import json, sys
import torch
from datasets import load_from_disk
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_path, data_dir, out_dir, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cuda = torch.cuda.is_available()
bf16 = cuda and torch.cuda.is_bf16_supported()
tokenizer = AutoTokenizer.from_pretrained(model_path)
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained(
    model_path, dtype=torch.bfloat16 if bf16 else torch.float16 if cuda else torch.float32)
args = SFTConfig(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
                 gradient_accumulation_steps=1, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0,
                 optim="adamw_torch", seed=42, logging_steps=1, save_strategy="no", report_to=[],
                 disable_tqdm=True, dataloader_num_workers=0, gradient_checkpointing=False, use_cpu=not cuda,
                 bf16=bf16, fp16=cuda and not bf16, max_length=MAX_LENGTH, assistant_only_loss=True, packing=False)
trainer = SFTTrainer(model=model, args=args, train_dataset=load_from_disk(data_dir), processing_class=tokenizer,
                     peft_config=LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                            bias="none", task_type="CAUSAL_LM"))
result = trainer.train()
tokens = [r["num_tokens"] for r in trainer.state.log_history if "num_tokens" in r][-1]
print("RESULT", json.dumps({"steps_per_second": result.metrics["train_steps_per_second"], "num_tokens": tokens,
                            "args": {k: getattr(args, k) for k in COMPARED}}, default=str))
'''

# What a user would write: TRL's defaults, LoRA on all linear layers.
PLAIN_DEFAULTS = r'''
import json, sys
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_path, data_path, out_dir, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForCausalLM.from_pretrained(model_path)
dataset = load_dataset("json", data_files=data_path, split="train")
args = SFTConfig(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
                 logging_steps=1, save_strategy="no", report_to=[], max_length=MAX_LENGTH,
                 # The one change TRL's own error message asks for on a machine without a GPU.
                 use_cpu=not torch.cuda.is_available())
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                     peft_config=LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM"))
result = trainer.train()
tokens = [r["num_tokens"] for r in trainer.state.log_history if "num_tokens" in r][-1]
print("RESULT", json.dumps({"steps_per_second": result.metrics["train_steps_per_second"], "num_tokens": tokens}))
'''


def constants(script: str) -> str:
    """The script with the benchmark's shared settings in front, so both sides read the same numbers."""
    return (f"BATCH, LR, RANK, ALPHA, MAX_LENGTH = {BATCH}, {LR}, {RANK}, {ALPHA}, {MAX_LENGTH}\n"
            f"COMPARED = {COMPARED!r}\n" + script)


def our_config(model: Path, steps: int, platform: str) -> dict:
    return {"method": "sft", "platform": platform, "engine": "transformers",
            "model": {"name": str(model), "max_seq_length": MAX_LENGTH},
            "dataset": {"path": str(DATA)}, "lora": {"r": RANK, "alpha": ALPHA, "target_modules": "all-linear"},
            "training": {"max_steps": steps, "per_device_train_batch_size": BATCH, "learning_rate": LR,
                         "logging_steps": 1, "save_steps": 100000, "save_total_limit": 1}}


def run_ours(model: Path, steps: int, runs_dir: Path, platform: str) -> dict:
    config = our_config(model, steps, platform)
    run_dir = create_run(runs_dir, config, "sft", "bench")
    env = trainer_environment(config)
    subprocess.run([sys.executable, "-m", "trainers.sft", "--run-dir", str(run_dir)], env=env, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    if read_status(run_dir).state != "succeeded":
        raise RuntimeError((run_dir / "train.log").read_text()[-3000:])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "train_steps_per_second" in r][-1]
    tokens = [r["num_tokens"] for r in records if "num_tokens" in r][-1]
    return {"steps_per_second": final["train_steps_per_second"], "num_tokens": tokens}


def run_plain(script: str, model: Path, data: Path, steps: int, work: Path, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", constants(script), str(model), str(data), str(work / "plain"),
                          str(steps)], env=env, cwd=work, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def our_dataset(target: Path) -> Path:
    """The rows exactly as our trainer trains on them (checked, normalised, message columns as JSON)."""
    from trainers.data import load_rows
    from trainers.datasets_hf import to_dataset

    rows, _ = load_rows(str(DATA), "sft")
    import datasets

    datasets.disable_progress_bars()
    to_dataset(rows, "sft").save_to_disk(str(target))
    return target


def check_settings(model: Path, steps: int, platform: str, plain_args: dict) -> None:
    """Refuse to compare unless the plain script's settings are the ones our trainer uses."""
    from trainers.engine import training_arguments

    ours = training_arguments(our_config(model, steps, platform), "unused", has_eval=False, engine="transformers")
    ours.setdefault("warmup_steps", 0)
    ours["gradient_checkpointing"] = ours.pop("activation_checkpointing", ours.get("gradient_checkpointing"))
    differing = {k: (ours[k], plain_args[k]) for k in COMPARED if str(ours[k]) != str(plain_args[k])}
    if differing:
        raise SystemExit(f"the plain script's settings differ from our trainer's (ours, plain): {differing}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
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
        data = our_dataset(work / "our-dataset")
        plain_env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
        plain_env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        our_env = trainer_environment(our_config(model, args.steps, args.platform), plain_env)
        sides = {
            "ours": lambda: run_ours(model, args.steps, work / "runs", args.platform),
            "plain, our settings": lambda: run_plain(PLAIN_OURS, model, data, args.steps, work, our_env),
            "plain, TRL defaults": lambda: run_plain(PLAIN_DEFAULTS, model, DATA, args.steps, work, plain_env),
        }
        results: dict[str, list[dict]] = {name: [] for name in sides}
        names = list(sides)
        for repeat in range(args.repeats):
            for name in names[repeat % 3:] + names[:repeat % 3]:
                results[name].append(sides[name]())
                print(f"  repeat {repeat + 1} {name:<20} {results[name][-1]['steps_per_second']:.3f} steps/s",
                      file=sys.stderr, flush=True)
                if name == "plain, our settings" and len(results[name]) == 1:  # before more time is spent on it
                    check_settings(model, args.steps, args.platform, results[name][0]["args"])
    ours_tokens = {r["num_tokens"] for r in results["ours"]}
    same_tokens = {r["num_tokens"] for r in results["plain, our settings"]}
    if ours_tokens != same_tokens or len(ours_tokens) != 1:
        raise SystemExit(f"ours and the plain script trained on different tokens: {ours_tokens} vs {same_tokens}")
    rate = {name: statistics.median(r["steps_per_second"] for r in runs) for name, runs in results.items()}
    o, s, d = rate["ours"], rate["plain, our settings"], rate["plain, TRL defaults"]
    load = os.getloadavg()[0]
    print(f"model {params} parameters, {args.steps} steps, batch {BATCH}, median of {args.repeats} interleaved "
          f"repeats, {os.cpu_count()} CPUs, load {load:.2f} at the end")
    print(f"trainers.sft:                          {o:.3f} steps/s ({ours_tokens.pop()} tokens)")
    print(f"plain TRL script, our settings:        {s:.3f} steps/s (same tokens)  -> overhead ratio "
          f"{o / s:.2f}x (goal >= 0.97x)")
    # Each repeat's own pair, run back to back: on a shared machine these say more than the medians' ratio.
    pairs = [a["steps_per_second"] / b["steps_per_second"]
             for a, b in zip(results["ours"], results["plain, our settings"])]
    print(f"  per repeat: {', '.join(f'{r:.2f}x' for r in pairs)}")
    print(f"plain TRL script, TRL's defaults:      {d:.3f} steps/s ({results['plain, TRL defaults'][0]['num_tokens']} "
          f"tokens)  -> {o / d:.2f}x: what a user would write (gradient checkpointing, bf16); our settings' "
          "gain, not our trainer's cost")


if __name__ == "__main__":
    main()
