"""The opt-in llama.cpp tier: needs llama-cpp-python with its server, which has no Linux wheel on PyPI and
compiles from source (minutes on 2 cores). Not part of the default run; select it with `pytest -m llama_cpp`
after installing it (README, "Tests"). Selected without llama-cpp-python, these tests fail: they never skip.

What it covers that the default tier cannot: k-quants through llama-cpp-python's quantizer, GGUF exports
loaded and asked for tokens by llama.cpp itself, llama.cpp's own tokenization of every exported family
against the Hugging Face tokenizer's, an eval against llama-cpp-python's OpenAI-compatible server
with concurrent streams, and a pipeline whose `backend: local` eval serves a GGUF export.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import EXAMPLES, REPO, copy_run
from gguf_tokens import FAMILIES, sample_texts

pytestmark = pytest.mark.llama_cpp

PROMPTS = EXAMPLES / "prompts" / "tool_calling.json"


@pytest.fixture(autouse=True)
def llama_cpp_installed():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("the llama_cpp tier needs llama-cpp-python[server] installed (see README, Tests)")


def cli(*args: str, runs_dir: Path, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synaptic_tui", *args, "--runs-dir", str(runs_dir)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


@pytest.fixture(scope="module")
def gguf_run(trained_sft_run, tmp_path_factory) -> Path:
    """The demo SFT run with q8_0 and q4_k_m GGUF exports of its best checkpoint."""
    runs_dir = tmp_path_factory.mktemp("llama-runs")
    run_dir = copy_run(trained_sft_run, runs_dir)
    out = cli("export", run_dir.name, "--format", "gguf-q8_0", "--format", "gguf-q4_k_m", "--json",
              runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    return run_dir


def exports(run_dir: Path) -> dict[str, dict]:
    best = json.loads((run_dir / "status.json").read_text())["best_checkpoint"]
    root = run_dir / "exports" / best
    return {fmt.name: {**json.loads((fmt / "export.json").read_text()), "dir": fmt} for fmt in root.iterdir()}


def test_k_quants_through_llama_cpp_python_load_and_generate(gguf_run, demo_model):
    done = exports(gguf_run)
    q4 = done["gguf-q4_k_m"]
    assert q4["quantizer"] == "llama-cpp-python"
    q8_size = (done["gguf-q8_0"]["dir"] / done["gguf-q8_0"]["file"]).stat().st_size
    assert (q4["dir"] / q4["file"]).stat().st_size < q8_size
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))  # the run's base model: its tokenizer
    for record in done.values():
        verify = record["verify"]
        # llama.cpp itself loaded the file and generated from it: tokens, and text that is their decoding.
        assert verify["loaded_by_llama_cpp"] is True and verify["llama_cpp_tokens"] and verify["llama_cpp_sample"]
        assert verify["llama_cpp_sample"] == tokenizer.decode(verify["llama_cpp_tokens"],
                                                               clean_up_tokenization_spaces=False)
        assert verify["chat_template"] and verify["tools_in_template"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_llama_cpp_tokenizes_as_the_hugging_face_tokenizer_does(family, family_gguf):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    model_dir, record = family_gguf(family)
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    llm = Llama(model_path=str(record["path"]), vocab_only=True, verbose=False)
    for text in sample_texts(hf):
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf(text, add_special_tokens=False)[
            "input_ids"], text


def test_eval_against_llama_cpp_server_with_concurrent_streams(gguf_run, tmp_path):
    from synaptic_tui.serving import llama_cpp_server

    q8 = exports(gguf_run)["gguf-q8_0"]
    cases = json.loads(PROMPTS.read_text())[:4]
    (tmp_path / "four.json").write_text(json.dumps(cases))
    with llama_cpp_server(q8["dir"] / q8["file"], tmp_path / "serve.log") as (url, model):
        out = subprocess.run(
            [sys.executable, "-m", "synaptic_tui", "eval", "--backend", "openai", "--url", url, "--model", model,
             "--prompt-set", str(tmp_path / "four.json"), "--max-tokens", "16", "--concurrency", "2",
             "--evals-dir", str(tmp_path / "evals"), "--json"],
            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    eval_dir = Path(json.loads(out.stdout)["eval_dir"])
    records = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(c["id"] for c in cases)
    # Two streams at once, neither cut off by the other (--interrupt_requests False).
    assert all(r["error"] is None and r["first_token_s"] is not None for r in records), [r["error"] for r in records]
    # This server sends no usage when streaming: the output chunks were counted, and the record says so.
    assert all(r["completion_tokens"] > 0 and r["token_source"] == "stream" for r in records)


def test_pipeline_eval_serves_a_gguf_export(demo_model, tmp_path):
    runs_dir = tmp_path / "runs"
    cases = json.loads(PROMPTS.read_text())[:2]
    (tmp_path / "two.json").write_text(json.dumps(cases))
    config = {"method": "sft", "platform": "cpu", "model": {"name": "demo", "max_seq_length": 2048},
              "dataset": {"path": str(EXAMPLES / "data" / "sft_tool_calls.jsonl"), "test_size": 0},
              "lora": {"r": 8, "alpha": 16}, "training": {"per_device_train_batch_size": 2},
              "pipeline": {"sft": {"training": {"max_steps": 2, "save_steps": 2}},
                           "export": {"formats": ["gguf-q8_0"]},
                           "eval": {"backend": "local", "prompt_set": "two.json", "max_tokens": 8,
                                    "concurrency": 2}}}
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = cli("pipeline", "--config", str(tmp_path / "pipe.yaml"), "--wait", "--json", runs_dir=runs_dir)
    pipeline_dir = Path(json.loads(out.stdout)["path"])
    log = (pipeline_dir / "pipeline.log").read_text()
    assert out.returncode == 0, log
    assert "with llama.cpp at http://127.0.0.1:" in log  # the GGUF export was what got served, nothing merged
    assert not list(next(pipeline_dir.parent.glob("*-sft-*")).glob("exports/*/merged-16bit"))
    result = json.loads((pipeline_dir / "pipeline.json").read_text())
    evaluation = next(s for s in result["stages"] if s["name"] == "eval")["result"]
    records = [json.loads(line) for line in (Path(evaluation["eval_dir"]) / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [c["id"] for c in cases]
    assert all(r["error"] is None and r["completion_tokens"] > 0 for r in records)
