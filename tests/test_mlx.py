"""The MLX platform for real, on Linux CPU (mlx[cpu]): mlx-lm LoRA training with the same run contract as CUDA runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO

from synaptic_tui.app import SynapticApp
from synaptic_tui.exporting import export_dir, read_export
from synaptic_tui.runs import list_runs, read_status
from synaptic_tui.services import Services
from synaptic_tui.widgets.checkpoint_table import CheckpointTable

MLX = str(EXAMPLES / "configs" / "mlx.yaml")
KEYS = {"step", "epoch", "time", "loss", "learning_rate", "tokens_per_second", "iterations_per_second",
        "peak_memory_gb"}


def cli(*args: str, runs_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synaptic_tui", *args, "--runs-dir", str(runs_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


async def wait_for(pilot, predicate, timeout: float = 400.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.2)
    raise AssertionError("timed out waiting")


@pytest.mark.slow
async def test_mlx_run_trains_live_cancels_resumes_and_fuses(demo_model, runs_dir):
    from synaptic_tui.screens.run_view import RunScreen

    out = cli("train", "--platform", "mlx", "--config", MLX, "--model", str(demo_model), "--yes", "--json",
              "--set", "training.max_steps=6", "--set", "training.save_steps=2", "--set", "training.eval_steps=2",
              "--set", "dataset.test_size=0.04", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    app = SynapticApp(Services.create(runs_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        app.show_run(run_dir)
        await pilot.pause(0.1)
        screen = app.screen
        assert isinstance(screen, RunScreen)
        table = screen.query_one(CheckpointTable)
        # The view follows the MLX trainer live: its first checkpoint shows as a row.
        await wait_for(pilot, lambda: table.row_count >= 1)
        assert "checkpoint-2" in [str(k.value) for k in table.rows]
        assert cli("runs", "cancel", run_dir.name, runs_dir=runs_dir).returncode == 0
        await wait_for(pilot, lambda: read_status(run_dir).state == "cancelled")
    stopped = read_status(run_dir)
    assert stopped.engine == "mlx" and stopped.last_checkpoint == f"checkpoint-{stopped.step}"
    assert (run_dir / "checkpoints" / stopped.last_checkpoint / "optimizer.safetensors").is_file()

    out = cli("runs", "resume", run_dir.name, runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 400
    while read_status(run_dir).state != "succeeded":
        assert read_status(run_dir).state not in ("failed", "cancelled"), read_status(run_dir).error
        assert time.monotonic() < deadline
        time.sleep(0.5)
    status = read_status(run_dir)
    assert (status.step, status.max_steps, status.engine) == (6, 6, "mlx")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    # The resumed run continued the step count: every step once, in order.
    assert train_steps == list(range(1, 7))
    assert all(KEYS <= set(r) for r in records if "loss" in r)
    # The optimizer came back with its step: the cosine schedule goes on falling across the resume
    # (a fresh optimizer would start again at the peak learning rate).
    rates = [r["learning_rate"] for r in records if "loss" in r]
    assert all(a > b for a, b in zip(rates, rates[1:])), rates
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4, 6]
    assert (run_dir / "final" / "adapters.safetensors").is_file()
    assert json.loads((run_dir / "final" / "adapter_config.json").read_text())["fine_tune_type"] == "lora"
    assert [r.run_id for r in list_runs(runs_dir)] == [run_dir.name]

    # Fused with mlx-lm into a Hugging Face model that transformers loads and generates from, and
    # converted to GGUF by llama.cpp's converter like any other run.
    out = cli("export", run_dir.name, "--checkpoint", "final", "--format", "merged-16bit", "--format", "lora",
              "--format", "gguf-q8_0", runs_dir=runs_dir, timeout=900)
    assert out.returncode == 0, out.stderr
    merged = read_export(export_dir(run_dir, "final", "merged-16bit"))
    assert merged["fused_with"] == "mlx-lm" and merged["verify"]["loads"] and merged["verify"]["tools_in_template"]
    lora = read_export(export_dir(run_dir, "final", "lora"))
    assert lora["adapter_format"] == "mlx-lm" and lora["adapter_max_delta"] > 0
    assert "optimizer.safetensors" not in lora["files"]
    gguf = read_export(export_dir(run_dir, "final", "gguf-q8_0"))
    assert gguf["verify"]["architecture"] == "llama" and gguf["verify"]["chat_template"]
    assert (export_dir(run_dir, "final", "gguf-q8_0") / gguf["file"]).read_bytes()[:4] == b"GGUF"

    # The upload plan and card of an MLX run (dry run: no network).
    out = cli("upload", run_dir.name, "--checkpoint", "final", "--repo-id", "me/mlx-demo", "--format", "lora",
              "--dry-run", "--json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    assert "library_name: mlx" in json.loads(out.stdout)["model_card"]

    # Evaluated like any run: its fused model served by mlx_lm.server, results filed under the run.
    from synaptic_tui.serving import mlx_server

    cases = json.loads((EXAMPLES / "prompts" / "tool_calling.json").read_text())[:2]
    prompts = runs_dir.parent / "two.json"
    prompts.write_text(json.dumps(cases))
    with mlx_server(export_dir(run_dir, "final", "merged-16bit"), runs_dir.parent / "serve.log") as (url, model):
        out = cli("eval", "--backend", "openai", "--url", url, "--model", model, "--prompt-set", str(prompts),
                  "--max-tokens", "8", "--run", run_dir.name, "--json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["total"] == 2 and summary["errors"] == 0
    assert Path(summary["eval_dir"]).parent == run_dir / "evals"


@pytest.mark.slow
@pytest.mark.parametrize(("fine_tune_type", "accumulation"), [("dora", 2), ("full", 1)])
def test_dora_full_and_gradient_accumulation(demo_model, runs_dir, fine_tune_type, accumulation):
    # The README's command as written: the example config's own `model: demo` (the session's demo model).
    out = cli("train", "--platform", "mlx", "--config", MLX, "--yes", "--wait", "--json",
              "--set", "training.max_steps=2", "--set", "training.save_steps=2", "--set", "dataset.test_size=0",
              "--set", f"lora.fine_tune_type={fine_tune_type}",
              "--set", f"training.gradient_accumulation_steps={accumulation}", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    # A step is an optimizer update, as TRL counts it: 2 steps of 2 batches each. The rate reported at
    # step k is the schedule's (cosine over 2 updates) value for update k-1: the peak, then half of it.
    # Counting batches as steps would have made one update and reported the peak twice.
    assert [r["step"] for r in train] == [1, 2]
    assert [r["learning_rate"] for r in train] == pytest.approx([0.0005, 0.00025])
    assert json.loads((run_dir / "final" / "adapter_config.json").read_text())["fine_tune_type"] == fine_tune_type
    out = cli("export", run_dir.name, "--checkpoint", "final", "--format", "merged-16bit", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    assert read_export(export_dir(run_dir, "final", "merged-16bit"))["verify"]["loads"]


def test_kto_on_mlx_is_refused_with_the_reason(demo_model, runs_dir):
    out = cli("train", "--platform", "mlx", "--method", "kto", "--config", MLX, "--model", str(demo_model),
              "--dry-run", runs_dir=runs_dir)
    assert out.returncode == 2
    assert "mlx-lm has no KTO trainer" in out.stderr


def test_mlx_loss_mask_covers_only_the_assistant_turns(demo_model):
    from mlx_lm.utils import load

    from trainers.chat_templates import choose_template, prepare_tokenizer
    from trainers.data import load_rows
    from trainers.mlx_lora import ChatRows

    _, tokenizer = load(str(demo_model))  # mlx-lm's wrapper, as the trainer gets it
    rows, _ = load_rows(str(EXAMPLES / "data" / "sft_tool_calls.jsonl"), "sft", max_rows=3)
    prepare_tokenizer(tokenizer._tokenizer, choose_template(tokenizer._tokenizer, "auto", needs_tools=True))
    ids, mask = ChatRows(rows, tokenizer, assistant_only=True, strategy="markers").process(rows[0])
    assert 0 < mask.sum() < len(ids)
    trained = tokenizer._tokenizer.decode([t for t, keep in zip(ids, mask) if keep])
    # What the loss sees is the assistant's answer and tool calls, never the user's question.
    user = next(m["content"] for m in rows[0]["messages"] if m["role"] == "user")
    assert user not in trained and "<tool_call>" in trained
    _, everything = ChatRows(rows, tokenizer, assistant_only=False, strategy="all").process(rows[0])
    assert everything.all()


@pytest.mark.slow
def test_mlx_resume_continues_the_data_order(demo_model, runs_dir):
    # Four steps straight, then again from checkpoint-2: the resumed run must see the same batches in the
    # same order (the seeded shuffle replayed, the two trained batches skipped), not start the data over.
    out = cli("train", "--platform", "mlx", "--config", MLX, "--model", str(demo_model), "--yes", "--wait", "--json",
              "--set", "training.max_steps=4", "--set", "training.save_steps=2", "--set", "dataset.test_size=0",
              "--set", "training.save_total_limit=5", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    straight = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                if "loss" in r}
    out = cli("runs", "resume", run_dir.name, "--from", "checkpoint-2", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 400
    while not ((status := read_status(run_dir)).state == "succeeded" and status.ended_at):
        assert status.state not in ("failed", "cancelled"), status.error
        assert time.monotonic() < deadline
        time.sleep(0.5)
    resumed = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
               if "loss" in r}
    assert sorted(resumed) == [1, 2, 3, 4]
    # Tokens trained so far count each batch's real tokens: equal only if every batch after the resume is
    # the one the straight run trained at that step.
    assert [resumed[s]["trained_tokens"] for s in range(1, 5)] == [straight[s]["trained_tokens"] for s in range(1, 5)]
    assert [resumed[s]["loss"] for s in range(3, 5)] == pytest.approx([straight[s]["loss"] for s in range(3, 5)],
                                                                     rel=1e-4)
    assert [resumed[s]["learning_rate"] for s in range(3, 5)] == pytest.approx(
        [straight[s]["learning_rate"] for s in range(3, 5)])
