"""Does a fine-tune make a real model call the tools? SmolLM2-135M-Instruct before and after SFT, in one run.

1. The base model is evaluated twice on the sample prompt set: with its own
   chat template (which drops the tools: what a user gets out of the box) and
   with the template the fine-tune will train with (the tools shown, the
   model untrained), so the gain is the training's and not the template's.
2. SFT with the shipped SFT config's settings on the sample data (default
   chat template `auto`, assistant-only loss), `--steps` optimizer steps.
3. The best checkpoint is exported merged-16bit and evaluated the same way.

Every model is served by the same real local server engine on loopback
(`synaptic-tui eval --serve`: the fastest this machine has, transformers
serve on a CPU; `--engine mlx` for mlx_lm.server). The prompt set is held out: its topics, folders and phrasings are
not in the training data (checked and printed). Prints the pass rate of each
model, per tag, and the gain over the better base. Goal: a gain of at least
40 points with no tag falling.

    python benchmarks/finetune_quality.py [--steps 32] [--set KEY=VALUE ...] [--max-tokens 160] [--model PATH]
                                          [--engine auto] [--trained RUN_DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = REPO / "examples" / "prompts" / "tool_calling.json"
DATA = REPO / "examples" / "data" / "sft_tool_calls.jsonl"
CONFIG = REPO / "examples" / "configs" / "sft.yaml"
GOAL = 0.40


def cli(*args: str, env: dict[str, str], timeout: float = 3600) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "synaptic_tui", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"synaptic-tui {' '.join(args[:2])} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def with_template(model: Path, template: str, into: Path) -> Path:
    """The model's files with another chat template: weights linked, tokenizer files copied."""
    into.mkdir(parents=True)
    for item in model.iterdir():
        if item.suffix == ".safetensors":
            (into / item.name).symlink_to(item)
        elif item.is_file() and item.name != "chat_template.jinja":
            shutil.copy2(item, into / item.name)
    config = json.loads((into / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (into / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return into


def evaluate(label: str, serve: str, work: Path, env: dict[str, str], max_tokens: int, engine: str) -> dict:
    started = time.monotonic()
    out = cli("eval", "--serve", serve, "--engine", engine, "--prompt-set", str(PROMPTS),
              "--max-tokens", str(max_tokens), "--temperature", "0", "--concurrency", "4", "--timeout", "900",
              "--evals-dir", str(work / "evals"), "--json", env=env)
    summary = json.loads(out.stdout)
    summary = summary.get("summary", summary)
    if summary.get("errors"):
        raise SystemExit(f"{label}: {summary['errors']} cases errored; the comparison would not be fair")
    print(f"  {label:<22} {summary['passed']:>2}/{summary['total']} ({summary['pass_rate']:.1%})  "
          f"{time.monotonic() - started:.0f} s", flush=True)
    return summary


def held_out() -> int:
    questions = {m["content"] for line in DATA.read_text().splitlines() if line.strip()
                 for m in json.loads(line)["messages"] if m["role"] == "user"}
    return sum(case["question"] in questions for case in json.loads(PROMPTS.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps of SFT (default 32)")
    parser.add_argument("--max-tokens", type=int, default=160, help="most tokens per answer (default 160)")
    parser.add_argument("--model", type=Path, help="SmolLM2-135M-Instruct directory (default: build it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training setting over the SFT config's, as `train --set` takes it")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--engine", default="auto", help="serving engine for every eval (default: serve's choice)")
    parser.add_argument("--trained", type=Path, metavar="RUN_DIR",
                        help="evaluate this finished run (a kept work directory's) instead of training again")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="finetune-quality-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SYNAPTIC_RUNS_DIR": str(work / "runs")}
    try:
        model = args.model
        if model is None:
            built = subprocess.run([sys.executable, "-m", "trainers.real_model", "--json"], cwd=REPO, env=env,
                                   capture_output=True, text=True, check=True)
            model = Path(json.loads(built.stdout)["path"])
        overlap = held_out()
        print(f"prompt set: {PROMPTS.name}, {len(json.loads(PROMPTS.read_text()))} cases, "
              f"{overlap} of them asked in the training data")

        if args.trained:
            run_dir = args.trained.resolve()
            env["SYNAPTIC_RUNS_DIR"] = str(run_dir.parent)
            status = json.loads((run_dir / "status.json").read_text())
            print(f"training: reusing {run_dir.name} ({status['state']}, step {status['step']})")
        else:
            print(f"training: SFT {args.steps} steps with {CONFIG.name}'s settings"
                  + (f" and {', '.join(args.set)}" if args.set else "") + f" on {DATA.name}", flush=True)
            started = time.monotonic()
            out = cli("train", "--config", str(CONFIG), "--model", str(model), "--yes", "--wait", "--json",
                      "--set", f"training.max_steps={args.steps}", "--set", f"training.save_steps={args.steps // 4}",
                      "--set", f"training.eval_steps={args.steps // 4}",
                      *[arg for setting in args.set for arg in ("--set", setting)], env=env)
            run_dir = Path(json.loads(out.stdout)["run_dir"])
            status = json.loads((run_dir / "status.json").read_text())
            print(f"  {status['state']} in {time.monotonic() - started:.0f} s", flush=True)
        print(f"  template {status['chat_template']['name']} (mask {status['chat_template']['mask']}); "
              f"best {status.get('best_checkpoint')}", flush=True)
        # The template the run trained with, as its checkpoints carry it, for the base model's second eval.
        best = status.get("best_checkpoint") or "final"
        saved = run_dir / ("final" if best == "final" else f"checkpoints/{best}")
        template = (saved / "chat_template.jinja").read_text() if (saved / "chat_template.jinja").is_file() \
            else json.loads((saved / "tokenizer_config.json").read_text())["chat_template"]

        print(f"evaluating ({args.engine} engine, temperature 0):", flush=True)
        try:
            results = {
                "base, own template": evaluate("base-own", str(model), work, env, args.max_tokens, args.engine),
                "base, run's template": evaluate("base-tools", str(with_template(model, template, work / "base-tools")),
                                                 work, env, args.max_tokens, args.engine),
                "fine-tuned": evaluate("tuned", f"{run_dir}:{best}", work, env, args.max_tokens, args.engine),
            }
        finally:
            subprocess.run([sys.executable, "-m", "synaptic_tui", "serve", "stop", "--all"], cwd=REPO, env=env,
                           capture_output=True)
        tags = sorted({tag for summary in results.values() for tag in summary["per_tag"]})
        print(f"\n{'tag':<12}" + "".join(f"{label:>22}" for label in results))
        for tag in tags:
            cells = []
            for summary in results.values():
                row = summary["per_tag"].get(tag, {"passed": 0, "total": 0})
                cells.append(f"{row['passed']}/{row['total']}")
            print(f"{tag:<12}" + "".join(f"{cell:>22}" for cell in cells))
        base = max(results["base, own template"]["pass_rate"], results["base, run's template"]["pass_rate"])
        tuned = results["fine-tuned"]["pass_rate"]
        fallen = [tag for tag in tags if any(
            results["fine-tuned"]["per_tag"].get(tag, {}).get("passed", 0) < summary["per_tag"].get(tag, {}).get("passed", 0)
            for label, summary in results.items() if label != "fine-tuned")]
        gain = tuned - base
        print(f"\npass rate: base {base:.1%} (the better of the two), fine-tuned {tuned:.1%}: gain "
              f"{gain * 100:+.1f} points; tags that fell: {', '.join(fallen) or 'none'}")
        print(f"goal: gain >= {GOAL * 100:.0f} points with no tag falling: "
              + ("met" if gain >= GOAL and not fallen else "NOT met"))
        return 0 if gain >= GOAL and not fallen else 1
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
