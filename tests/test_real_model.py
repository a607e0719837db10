"""Training, exporting and serving a real instruct model (SmolLM2-135M-Instruct) with default settings.

Its stock template renders neither tools nor tool calls and has no
{% generation %} markers: the run must pick a template that keeps the tool
calls, train on them and nothing of the prompt, and carry that template to
every checkpoint and export, so a server of the export writes tool calls the
evaluator reads back.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO

from trainers.chat_templates import BUILTINS, encode

pytestmark = pytest.mark.slow
SFT = EXAMPLES / "data" / "sft_tool_calls.jsonl"
KTO = EXAMPLES / "data" / "kto_tool_calls.jsonl"
CHATML_TOOLS = BUILTINS["chatml-tools"].source


def train(runs_dir: Path, *args: str) -> Path:
    out = subprocess.run([sys.executable, "-m", "synaptic_tui", "train", "--runs-dir", str(runs_dir), "--model",
                          "smollm2", "--yes", "--wait", "--json", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(json.loads(out.stdout)["run_dir"])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def real_sft_run(real_model, tmp_path_factory) -> Path:
    """SFT of the real model on the sample tool-call data, every setting but the length at its default."""
    return train(tmp_path_factory.mktemp("real-runs"), "--dataset", str(SFT), "--set", "training.max_steps=4",
                 "--set", "training.save_steps=2")


def test_a_batch_trains_on_the_tool_calls_and_nothing_of_the_prompt(real_model, runs_dir):
    """Decode what the trainer's own dataloader hands the model: the learned tokens are the answers."""
    from synaptic_tui.config import config_to_dict, load_config
    from synaptic_tui.jobs import resolve_embedded_model
    from synaptic_tui.runs import create_run
    from trainers.common import RunWriter, StopRequest
    from trainers.sft import build_trainer

    config = config_to_dict(load_config(None, ["model.name=smollm2", f"dataset.path={SFT}",
                                               "training.per_device_train_batch_size=8"]))
    resolve_embedded_model(config)
    run_dir = create_run(runs_dir, config, "sft", "real")
    trainer, tokenizer, _ = build_trainer(RunWriter(run_dir), StopRequest())
    batch = next(iter(trainer.get_train_dataloader()))
    calls = 0
    for ids, labels, attended in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                     batch["attention_mask"].tolist()):
        # The pad token is <|im_end|> here: padding is told apart by the attention mask, not the id.
        full = tokenizer.decode([t for t, keep in zip(ids, attended) if keep])
        learned = tokenizer.decode([t for t, label in zip(ids, labels) if label != -100])
        answers = "".join(re.findall(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", full, re.DOTALL))
        for call in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", answers):
            calls += 1
            name, arguments = json.loads(call)["name"], json.loads(call)["arguments"]
            assert f'{{"name": "{name}", "arguments": {json.dumps(arguments)}}}' in learned
        prompt_parts = re.findall(r"<\|im_start\|>(?:system|user)\n(.*?)<\|im_end\|>", full, re.DOTALL)
        assert prompt_parts, "every row has a system prompt and a question"
        for part in prompt_parts:
            assert part.strip()[:60] not in learned, "prompt tokens are masked out of the loss"
        assert learned.endswith("<|im_end|>"), "the model learns to end its turn"
    assert calls >= 4, "a batch of eight sample rows holds several tool calls"


def test_sft_trains_the_real_model_with_its_template_recorded_and_carried(real_sft_run):
    status = json.loads((real_sft_run / "status.json").read_text())
    assert status["state"] == "succeeded"
    assert status["chat_template"]["name"] == "chatml-tools" and status["chat_template"]["mask"] == "markers"
    assert "health_warnings" not in status
    steps = [r for r in metrics(real_sft_run) if "grad_norm" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in steps)
    # The template travels with every checkpoint and the final adapter.
    from transformers import AutoTokenizer

    for where in ("checkpoints/checkpoint-2", "checkpoints/checkpoint-4", "final"):
        assert AutoTokenizer.from_pretrained(real_sft_run / where).chat_template == CHATML_TOOLS, where


def test_kto_on_the_real_model_has_gradients_and_margins_that_move(real_model, runs_dir):
    run_dir = train(runs_dir, "--config", str(EXAMPLES / "configs" / "kto.yaml"), "--set", "training.max_steps=2",
                    "--set", "training.save_steps=2")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "succeeded" and status["chat_template"]["name"] == "chatml-tools"
    steps = [r for r in metrics(run_dir) if "grad_norm" in r]
    assert len(steps) == 2 and all(r["grad_norm"] > 0 for r in steps)
    assert all(r["logps/chosen"] != r["logps/rejected"] for r in steps if "logps/rejected" in r)
    assert len({round(r["rewards/margins"], 6) for r in steps}) > 1, "the margins move"


def test_mlx_trains_the_real_model_with_the_same_mask(real_model, runs_dir):
    from mlx_lm.utils import load
    from transformers import AutoTokenizer

    from trainers.chat_templates import choose_template, prepare_tokenizer
    from trainers.data import load_rows
    from trainers.mlx_lora import ChatRows

    rows, _ = load_rows(SFT, "sft")
    _, wrapped = load(str(real_model))
    hf = AutoTokenizer.from_pretrained(real_model)
    for tokenizer in (wrapped._tokenizer, hf):
        prepare_tokenizer(tokenizer, choose_template(tokenizer, "auto", needs_tools=True))
    chat = ChatRows(rows[:10], wrapped, assistant_only=True, strategy="markers")
    for row in rows[:10]:
        ids, mask = chat.process(row)
        assert (ids, mask.tolist()) == tuple(map(list, encode(hf, row["messages"], row.get("tools"))[:2]))
    # MLX's CPU backend runs this model's forward pass at ~2 GFLOP/s here (a minute for one 400-token row):
    # one shipped row with a tool call, its tool definitions cut to the one it calls, one step, LoRA on the
    # top two layers (the backward pass stops there).
    row = next(r for r in rows if [c["function"]["name"] for m in r["messages"] for c in m.get("tool_calls") or []]
               == ["get_workspace"])
    row = {**row, "tools": [t for t in row["tools"] if t["function"]["name"] == "get_workspace"]}
    data = runs_dir.parent / "one.jsonl"
    data.write_text(json.dumps(row) + "\n")
    run_dir = train(runs_dir, "--config", str(EXAMPLES / "configs" / "mlx.yaml"), "--dataset", str(data),
                    "--set", "training.max_steps=1", "--set", "training.save_steps=1", "--set", "dataset.test_size=0",
                    "--set", "training.per_device_train_batch_size=1", "--set", "lora.num_layers=2")
    step = metrics(run_dir)[0]
    _, mask, _ = encode(hf, row["messages"], row["tools"])
    # mlx-lm counts the tokens its loss reads: exactly the assistant tokens of the mask.
    assert (step["step"], step["trained_tokens"]) == (1, sum(mask)) and math.isfinite(step["loss"])
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "succeeded" and status["engine"] == "mlx"
    assert status["chat_template"] | {"reason": None} == status["chat_template"] | {
        "name": "chatml-tools", "mask": "markers", "reason": None}
    assert AutoTokenizer.from_pretrained(run_dir / "final").chat_template == CHATML_TOOLS


def test_the_export_carries_the_template_to_the_gguf_and_ollama(real_sft_run, tmp_path):
    from conftest import copy_run

    run_dir = copy_run(real_sft_run, tmp_path / "runs")
    out = subprocess.run([sys.executable, "-m", "synaptic_tui", "export", str(run_dir), "--format", "merged-16bit",
                          "--format", "gguf-q8_0", "--json"], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    exports = json.loads(out.stdout)["exports"]
    merged = exports["merged-16bit"]
    assert merged["verify"]["template"] == {"name": "chatml-tools", "tool_format": "hermes"}
    gguf = exports["gguf-q8_0"]
    assert gguf["chat_template"] == "chatml-tools" and gguf["ollama_template"] is True
    assert gguf["verify"]["tools_in_template"] is True
    modelfile = (Path(gguf["path"]) / gguf["modelfile"]).read_text()
    assert 'TEMPLATE """' in modelfile and "{{- range $j, $call := .ToolCalls }}" in modelfile
    assert "<tool_call>" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_a_served_export_writes_tool_calls_the_evaluator_reads_back(real_model, runs_dir, tmp_path):
    """The closed loop on the real model: train on a few conversations until the model has the format,
    serve the export on a real local server (transformers serve, merged on demand), evaluate those
    prompts: the tool calls come back in the run's format and are read as calls with the right ids."""
    from trainers.data import load_rows

    rows, _ = load_rows(SFT, "sft")
    chosen = [r for r in rows if [m["tool_calls"][0]["function"]["name"] for m in r["messages"]
                                  if m.get("tool_calls")] == ["get_workspace"]][:4]
    assert len(chosen) == 4
    data = tmp_path / "workspace.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chosen * 2))
    run_dir = train(runs_dir, "--dataset", str(data), "--set", "training.max_steps=8", "--set",
                    "training.learning_rate=0.002", "--set", "training.save_steps=8")
    cases = [{"id": f"ws-{i}", "question": r["messages"][1]["content"], "system": r["messages"][0]["content"],
              "tools": r["tools"], "expected_tools": ["get_workspace"],
              "expected_context": r["messages"][2]["tool_calls"][0]["function"]["arguments"]["context"]}
             for i, r in enumerate(chosen[:3])]
    prompts = tmp_path / "cases.json"
    prompts.write_text(json.dumps(cases))
    try:
        out = subprocess.run([sys.executable, "-m", "synaptic_tui", "eval", "--serve", f"{run_dir}:final",
                              "--engine", "transformers", "--prompt-set", str(prompts), "--max-tokens", "80",
                              "--runs-dir", str(runs_dir), "--json"], cwd=REPO, capture_output=True, text=True,
                             timeout=900)
    finally:
        subprocess.run([sys.executable, "-m", "synaptic_tui", "serve", "stop", "--all", "--runs-dir", str(runs_dir)],
                       cwd=REPO, capture_output=True)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert (summary["total"], summary["errors"]) == (3, 0)
    records = [json.loads(line) for line in (Path(summary["eval_dir"]) / "results.jsonl").read_text().splitlines()]
    assert all([c["name"] for c in r["calls"]] == ["get_workspace"] for r in records), records
    assert summary["passed"] == 3, [r["reasons"] for r in records]
