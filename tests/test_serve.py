"""`synaptic-tui serve`: real servers on loopback (transformers serve and mlx_lm.server with the demo model, the
trained demo run and the real SmolLM2), what each engine would be started with (vLLM cannot run here), reuse,
stop, crashes shown with the log's tail, and evals that go through them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import EXAMPLES, REPO, copy_run

from evaluator.clients import BackendError, OpenAIClient
from evaluator.runner import read_results
from synaptic_tui.jobs import read_launch, trainer_alive
from synaptic_tui.servers import ServeError, choose_engine, engines
from synaptic_tui.servers.launch import find_server, list_servers, log_tail, read_server, stop_server
from synaptic_tui.servers.targets import TargetError, model_target, resolve_target

PROMPTS = EXAMPLES / "prompts" / "tool_calling.json"


def cli(*args: str, runs_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synaptic_tui", *args, "--runs-dir", str(runs_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def serve(ref: str, runs_dir: Path, *extra: str) -> dict:
    out = cli("serve", ref, "--json", *extra, runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


@pytest.fixture
def servers_dir(runs_dir):
    """A runs dir whose servers are all stopped after the test, however it ends."""
    yield runs_dir
    for server in list_servers(runs_dir, live_only=True):
        stop_server(server, grace=10)


@pytest.fixture(scope="module")
def served_demo(demo_model, tmp_path_factory):
    """transformers serve (the default engine here) serving the demo model, for the module."""
    runs_dir = tmp_path_factory.mktemp("served") / "runs"
    runs_dir.mkdir()
    server = serve(str(demo_model), runs_dir)
    yield {"runs_dir": runs_dir, **server}
    for live in list_servers(runs_dir, live_only=True):
        stop_server(live, grace=10)


def small_set(tmp_path: Path, count: int = 4) -> Path:
    path = tmp_path / "small.json"
    path.write_text(json.dumps(json.loads(PROMPTS.read_text())[:count]))
    return path


# --- the streaming client against what transformers serve sends ------------------------------------------


def transformers_stream(*pieces: str, finish: str = "length") -> bytes:
    """A stream as `transformers serve` 5.x writes it: role chunk, content chunks, then one chunk with
    finish_reason and usage, and no `data: [DONE]`."""
    chunk = lambda delta, **more: {"id": "r1", "choices": [{"delta": delta, "index": 0, **more}],  # noqa: E731
                                   "object": "chat.completion.chunk", "model": "m", "system_fingerprint": ""}
    events = [chunk({"role": "assistant"})] + [chunk({"content": p}) for p in pieces]
    events.append({**chunk({}, finish_reason=finish),
                   "usage": {"completion_tokens": len(pieces), "prompt_tokens": 32, "total_tokens": 32 + len(pieces)}})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()


async def test_a_stream_ending_with_a_finish_reason_and_no_done_is_a_complete_answer():
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=transformers_stream("Hel", "lo", "!")))
    seen: list[str] = []
    async with OpenAIClient("http://test/v1", transport=transport) as client:
        result = await client.chat("m", [{"role": "user", "content": "hi"}], on_text=seen.append)
    assert (result.content, result.finish_reason) == ("Hello!", "length")
    assert (result.prompt_tokens, result.completion_tokens, result.token_source) == (32, 3, "server")
    assert seen == ["Hel", "lo", "!"]  # each piece as it arrived, for the Chat screen


async def test_a_stream_cut_before_any_finish_reason_is_still_truncated():
    body = transformers_stream("Hel", "lo").rsplit(b"data: ", 1)[0]  # the last (finishing) chunk never came
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    async with OpenAIClient("http://test/v1", transport=transport) as client:
        with pytest.raises(BackendError) as err:
            await client.chat("m", [{"role": "user", "content": "hi"}])
    assert err.value.kind == "truncated" and "without [DONE] or a finish_reason (2 chunks received)" in str(err.value)


# --- what a reference names ------------------------------------------------------------------------------


def test_references_name_checkpoints_the_base_model_and_models(trained_sft_run, runs_dir, demo_model, tmp_path):
    run_dir = copy_run(trained_sft_run, runs_dir)
    run_id = run_dir.name
    best = resolve_target(run_id, runs_dir)
    assert (best.checkpoint, best.adapter, best.adapter_kind) == ("checkpoint-4", run_dir / "checkpoints" /
                                                                  "checkpoint-4", "peft")
    # The run trained with chatml-tools, whose calls are Hermes <tool_call> JSON.
    assert (best.tool_format, best.template, best.lora_rank) == ("hermes", "chatml-tools", 8)
    second = resolve_target(f"{run_id[:15]}:checkpoint-2", runs_dir)
    assert second.key == f"{run_dir.resolve()}:checkpoint-2" and second.served_name == "sft-demo-model-checkpoint-2"
    assert resolve_target(f"{run_id}:final", runs_dir).adapter == run_dir / "final"
    base = resolve_target(f"{run_id}:base", runs_dir)
    assert (base.checkpoint, base.adapter, base.base_model) == (None, None, str(demo_model))
    # The base of a run and the model itself are one target: one server serves both.
    assert base.key == model_target(str(demo_model)).key == str(demo_model.resolve())
    assert resolve_target("demo", runs_dir).key == base.key
    # A checkpoint given by path is its run's checkpoint; a portable reference finds it from anywhere.
    by_path = resolve_target(str(run_dir / "checkpoints" / "checkpoint-2"), runs_dir)
    assert by_path.key == second.key
    assert resolve_target(second.portable_ref, tmp_path / "elsewhere").key == second.key
    with pytest.raises(TargetError, match="has no checkpoint 'checkpoint-9'"):
        resolve_target(f"{run_id}:checkpoint-9", runs_dir)
    with pytest.raises(TargetError, match="neither a run, a checkpoint"):
        resolve_target("no-such-thing", runs_dir)


# --- which engine, and with what command -------------------------------------------------------------------


def test_the_default_engine_on_a_cpu_is_transformers_serve_and_gguf_goes_to_llama_cpp(demo_model, tmp_path):
    assert shutil.which("nvidia-smi") is None  # this machine: a CPU, no GPU
    assert choose_engine(model_target(str(demo_model))).name == "transformers"
    assert choose_engine(model_target(str(demo_model)), "mlx").name == "mlx"
    with pytest.raises(ServeError, match="needs an NVIDIA GPU|not installed"):
        choose_engine(model_target(str(demo_model)), "vllm")
    gguf = tmp_path / "m-q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    target = model_target(str(gguf))
    if engines()["llama.cpp"].missing():
        with pytest.raises(ServeError, match=r"llama.cpp server: not installed: .*\[llama-cpp\]"):
            choose_engine(target)
    else:
        assert choose_engine(target).name == "llama.cpp"


def test_doctor_says_which_engines_are_here_and_which_serve_picks():
    from synaptic_tui.doctor import check_serving

    check = check_serving()
    assert check.status == "ok" and check.detail["default"] == "transformers"
    assert {"transformers", "mlx"} <= set(check.detail["available"])
    assert check.summary.startswith("default transformers serve; available: transformers serve, mlx_lm.server")
    vllm = check.detail["engines"]["vllm"]
    assert vllm["extra"] == "vllm" and ("not installed" in vllm["missing"] or "NVIDIA GPU" in vllm["missing"])
    assert "vLLM (.[vllm])" in check.summary


def test_vllm_serves_every_checkpoint_of_a_run_as_lora_adapters_on_one_server(trained_sft_run, runs_dir,
                                                                               demo_model, tmp_path):
    from synaptic_tui.servers.vllm import ENGINE

    run_dir = copy_run(trained_sft_run, runs_dir)
    target = resolve_target(f"{run_dir.name}:checkpoint-2", runs_dir)
    assert ENGINE.export_needed(target) is None  # adapters are served as they are: no merge
    plan = ENGINE.plan(target, target.base_model, 8123, tmp_path)
    command = plan.command
    assert command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    option = lambda name: command[command.index(name) + 1]  # noqa: E731
    assert (option("--model"), option("--served-model-name"), option("--port")) == (str(demo_model), "demo-model",
                                                                                    "8123")
    assert "--enable-lora" in command and option("--max-lora-rank") == "8" and option("--max-loras") == "3"
    modules = command[command.index("--lora-modules") + 1:command.index("--lora-modules") + 4]
    assert modules == [f"sft-demo-model-{name}={run_dir / sub}" for name, sub in (
        ("checkpoint-2", "checkpoints/checkpoint-2"), ("checkpoint-4", "checkpoints/checkpoint-4"),
        ("final", "final"))]
    # The run's Hermes calls are parsed by vLLM; its template (not the base model's) renders every prompt.
    assert (option("--tool-call-parser"), "--enable-auto-tool-choice" in command) == ("hermes", True)
    assert option("--chat-template") == str(run_dir / "checkpoints" / "checkpoint-2" / "chat_template.jinja")
    assert plan.model_id == "sft-demo-model-checkpoint-2"
    assert plan.serves == {f"{run_dir.resolve()}:{c}": f"sft-demo-model-{c}"
                           for c in ("checkpoint-2", "checkpoint-4", "final")}
    # What vLLM would load is real: each module is a PEFT adapter of that base model, of a rank within the bound.
    check = ("import json, sys; from peft import PeftConfig\n"
             "for arg in sys.argv[2:]:\n"
             "    name, path = arg.split('=', 1); c = PeftConfig.from_pretrained(path)\n"
             "    print(json.dumps([name, c.base_model_name_or_path, c.r, c.peft_type.value]))")
    out = subprocess.run([sys.executable, "-c", check, option("--max-lora-rank"), *modules], capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    loaded = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(base, r, kind) for _, base, r, kind in loaded] == [(str(demo_model), 8, "LORA")] * 3
    # A run whose template added tokens cannot be served as a LoRA adapter: vLLM then serves its merge.
    target.added_tokens = ["<|im_start|>"]
    assert ENGINE.export_needed(target) == "merged-16bit"
    merged = ENGINE.plan(target, str(tmp_path / "merged"), 8123, tmp_path).command
    assert "--enable-lora" not in merged and merged[merged.index("--model") + 1] == str(tmp_path / "merged")


def test_vllm_max_lora_rank_is_one_vllm_accepts():
    from synaptic_tui.servers.vllm import lora_rank_bound

    assert [lora_rank_bound(r) for r in (None, 4, 8, 12, 64, 300)] == [8, 8, 8, 16, 64, 320]
    with pytest.raises(ServeError, match="above vLLM's largest"):
        lora_rank_bound(1024)


# --- transformers serve, for real ---------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_starts_a_detached_server_lists_it_and_reuses_it(served_demo, demo_model):
    runs_dir = served_demo["runs_dir"]
    assert served_demo["started"] is True and served_demo["state"] == "ready"
    assert (served_demo["engine"], served_demo["model_id"]) == ("transformers", "demo-model")
    server_dir = Path(served_demo["path"])
    assert server_dir.parent == runs_dir / ".servers"
    launch = json.loads((server_dir / "launch.json").read_text())
    assert launch["command"][:5] == [sys.executable, "-m", "transformers.cli.transformers", "serve", "demo-model"]
    assert "--continuous-batching" in launch["command"]
    assert os.getpgid(launch["pid"]) == launch["pid"]  # its own process group: a closed terminal never reaches it
    listed = httpx.get(f"{served_demo['url']}/models", trust_env=False, timeout=10).json()["data"]
    assert [m["id"] for m in listed] == ["demo-model"]
    # The same model again: the running server, not a second one.
    again = serve("demo", runs_dir)
    assert (again["started"], again["server_id"], again["url"]) == (False, served_demo["server_id"],
                                                                    served_demo["url"])
    out = cli("serve", "list", "--json", runs_dir=runs_dir)
    [row] = [s for s in json.loads(out.stdout) if s["state"] == "ready"]
    assert (row["server_id"], row["port"], row["engine"]) == (served_demo["server_id"], served_demo["port"],
                                                              "transformers")
    text = cli("serve", "list", runs_dir=runs_dir).stdout
    assert served_demo["server_id"] in text and served_demo["url"] in text


@pytest.mark.slow
def test_eval_serve_streams_from_transformers_serve_without_truncation(served_demo, tmp_path):
    out = cli("eval", "--serve", "demo", "--prompt-set", str(small_set(tmp_path)), "--max-tokens", "8",
              "--concurrency", "2", "--evals-dir", str(tmp_path / "evals"), "--json", runs_dir=served_demo["runs_dir"])
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["total"], summary["errors"]) == (4, 0)  # before the client fix: 4 of 4 "truncated"
    records = read_results(Path(summary["eval_dir"]))
    assert all(r["finish_reason"] == "length" and r["completion_tokens"] == 8 and r["token_source"] == "server"
               for r in records)
    settings = json.loads((Path(summary["eval_dir"]) / "eval.json").read_text())["settings"]
    assert (settings["url"], settings["model"]) == (served_demo["url"], "demo-model")
    assert settings["serve"] == str(Path(served_demo["target"]["key"]))


@pytest.mark.slow
def test_a_server_that_dies_mid_eval_fails_the_requests_left_and_keeps_every_result(served_demo, tmp_path,
                                                                                    demo_model):
    import asyncio

    from evaluator.prompts import load_prompt_set
    from evaluator.runner import create_eval, new_settings, run_eval

    runs_dir = tmp_path / "own-runs"
    runs_dir.mkdir()
    server = serve(str(demo_model), runs_dir)  # its own server: this test kills it
    try:
        settings = new_settings("openai", server["model_id"], load_prompt_set(small_set(tmp_path, 6)),
                                url=server["url"], max_tokens=8, concurrency=1, retries=1)
        eval_dir = create_eval(settings, tmp_path / "evals")
        pid = json.loads((Path(server["path"]) / "launch.json").read_text())["pid"]

        def killed_after_two(record):
            if len(read_results(eval_dir)) == 2:
                os.killpg(pid, signal.SIGKILL)
                while trainer_alive(Path(server["path"])):  # gone, not dying, before the next case is asked
                    time.sleep(0.02)

        summary = asyncio.run(run_eval(eval_dir, on_result=killed_after_two,
                                       client=OpenAIClient(server["url"], retries=1, backoff=0.01)))
        records = {r["id"]: r for r in read_results(eval_dir)}
        assert sorted(records) == sorted(settings.case_ids)  # nothing lost: a record for every case
        first, rest = settings.case_ids[:2], settings.case_ids[2:]
        assert all(records[i]["error"] is None for i in first)
        assert {records[i]["error"]["kind"] for i in rest} == {"connect"}
        assert all(f"cannot connect to {server['url']}/chat/completions" in records[i]["error"]["message"]
                   for i in rest)
        assert (summary["total"], summary["errors"]) == (6, 4)
        # The server is shown failed, with what its log last said.
        for _ in range(100):
            dead = find_server(runs_dir, server["server_id"])
            if dead.state == "failed":
                break
            time.sleep(0.1)
        assert dead.state == "failed" and dead.error.startswith("transformers exited")
    finally:
        for live in list_servers(runs_dir, live_only=True):
            stop_server(live, grace=10)


@pytest.mark.slow
def test_a_server_that_cannot_start_is_shown_with_its_logs_tail(servers_dir, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture", "architectures": ["Nope"]}')
    out = cli("serve", str(broken), "--timeout", "300", runs_dir=servers_dir)
    assert out.returncode == 1
    assert "transformers for broken-model exited before it was ready; the end of" in out.stderr
    [server] = list_servers(servers_dir)
    assert server.state == "failed" and server.error.startswith("transformers exited: ")
    # The reason is the log's last line, as the list shows it.
    assert server.error.endswith(log_tail(server.log_path)[-1])
    assert server.error in cli("serve", "list", runs_dir=servers_dir).stdout


@pytest.mark.slow
def test_stop_ends_the_server_and_its_process_group(servers_dir, demo_model):
    server = serve(str(demo_model), servers_dir)
    pid = json.loads((Path(server["path"]) / "launch.json").read_text())["pid"]
    out = cli("serve", "stop", server["server_id"][:15], runs_dir=servers_dir)
    assert out.returncode == 0 and out.stdout.strip() == f"stopped {server['server_id']}"
    assert trainer_alive(Path(server["path"])) is False and pid == read_launch(Path(server["path"])).pid
    assert read_server(Path(server["path"])).state == "stopped"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server['url']}/models", trust_env=False, timeout=5)
    assert cli("serve", "stop", "--all", runs_dir=servers_dir).stdout.strip() == "nothing was running"


@pytest.mark.slow
def test_a_checkpoint_is_merged_on_demand_and_its_tool_calls_parsed_by_the_server(trained_sft_run, servers_dir):
    from synaptic_tui.exporting import export_dir, read_export

    run_dir = copy_run(trained_sft_run, servers_dir)
    server = serve(f"{run_dir.name}:checkpoint-2", servers_dir)
    # transformers serve cannot load a PEFT adapter: the merged-16bit export was made for it, and kept.
    assert read_export(export_dir(run_dir, "checkpoint-2", "merged-16bit"))["format"] == "merged-16bit"
    assert (server["model_id"], server["tool_parser"], server["tool_format"]) == (
        "sft-demo-model-checkpoint-2", "transformers", "hermes")
    view = Path(server["path"]) / "sft-demo-model-checkpoint-2"
    assert (view / "model.safetensors").resolve().parent == export_dir(run_dir, "checkpoint-2", "merged-16bit")
    # The server's own parser (transformers' response templates) turns the run's <tool_call> JSON into calls.
    parse = ("import json, sys; from transformers import AutoTokenizer\n"
             "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
             "prefix = t.apply_chat_template([{'role': 'user', 'content': 'find'}], add_generation_prompt=True,"
             " tokenize=False)\n"
             "text = 'On it.\\n<tool_call>\\n{\"name\": \"search_notes\", \"arguments\": {\"query\": \"x\"}}"
             "\\n</tool_call><|im_end|>'\n"
             "ids = t(text, add_special_tokens=False)['input_ids']\n"
             "print(json.dumps(t.parse_response(ids, t.response_template, prefix=prefix)))")
    out = subprocess.run([sys.executable, "-c", parse, str(view)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"role": "assistant", "content": "On it.", "tool_calls": [
        {"type": "function", "function": {"name": "search_notes", "arguments": {"query": "x"}}}]}
    reply = httpx.post(f"{server['url']}/chat/completions", trust_env=False, timeout=120, json={
        "model": server["model_id"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4


# --- mlx_lm.server ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlx_lm_server_through_serve_and_its_tool_parser_for_the_runs_format(trained_sft_run, servers_dir, tmp_path):
    run_dir = copy_run(trained_sft_run, servers_dir)
    server = serve(f"{run_dir.name}:checkpoint-4", servers_dir, "--engine", "mlx")
    # A view of the merged export, named for the checkpoint; mlx_lm.server answers to its path.
    assert (server["engine"], server["model_id"], server["tool_parser"]) == (
        "mlx", str(Path(server["path"]).resolve() / "sft-demo-model-checkpoint-4"), "mlx_lm:json_tools")
    out = cli("eval", "--serve", f"{run_dir.name}:checkpoint-4", "--engine", "mlx", "--prompt-set",
              str(small_set(tmp_path, 2)), "--max-tokens", "8", "--json", runs_dir=servers_dir)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["total"], summary["errors"]) == (2, 0)
    assert Path(summary["eval_dir"]).parent == run_dir / "evals"  # filed under the run
    settings = json.loads((Path(summary["eval_dir"]) / "eval.json").read_text())["settings"]
    assert (settings["url"], settings["tool_format"], settings["checkpoint"]) == (server["url"], "hermes",
                                                                                  "checkpoint-4")
    # mlx-lm's own loader reads the parser from the view and finds <tool_call> JSON in a reply.
    check = ("import sys; from pathlib import Path; from mlx_lm.tokenizer_utils import load\n"
             "t = load(Path(sys.argv[1]))\n"
             "print(t.has_tool_calling, t.tool_call_start, t.tool_parser('{\"name\": \"a\", \"arguments\": {}}'))")
    probe = subprocess.run([sys.executable, "-c", check, server["model_id"]],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "True <tool_call> {'name': 'a', 'arguments': {}}"


# --- the real small model -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_real_model_answers_through_the_default_engine(real_model, servers_dir, tmp_path):
    server = serve("smollm2", servers_dir)
    assert (server["engine"], server["model_id"]) == ("transformers", "smollm2-135m-instruct")
    reply = httpx.post(f"{server['url']}/chat/completions", trust_env=False, timeout=300, json={
        "model": server["model_id"], "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 12, "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert "Paris" in reply.json()["choices"][0]["message"]["content"]


# --- the run view: one key evaluates a checkpoint on a server it starts, the base model beside it -------------


@pytest.mark.slow
async def test_evaluate_a_checkpoint_from_the_run_view_with_the_base_model_beside_it(trained_sft_run, servers_dir,
                                                                                    tmp_path, monkeypatch):
    from textual.widgets import Checkbox, Input, RadioSet, Select

    from evaluator.runner import load_eval
    from synaptic_tui.app import SynapticApp
    from synaptic_tui.screens.evaluate import EvaluateScreen
    from synaptic_tui.screens.run_view import RunScreen
    from synaptic_tui.services import Services
    from synaptic_tui.widgets.checkpoint_table import CheckpointTable

    run_dir = copy_run(trained_sft_run, servers_dir)
    (tmp_path / "prompts").mkdir()
    small_set(tmp_path / "prompts", 2)
    monkeypatch.chdir(tmp_path)
    app = SynapticApp(Services(runs_dir=servers_dir, refresh_seconds=0.2))
    async with app.run_test(size=(150, 45)) as pilot:
        await app.push_screen(RunScreen(run_dir))
        table = app.screen.query_one(CheckpointTable)
        for _ in range(100):
            if table.row_count == 3:
                break
            await pilot.pause(0.1)
        table.move_cursor(row=1)  # checkpoint-4
        await pilot.press("e")
        screen = app.screen
        assert isinstance(screen, EvaluateScreen) and screen.checkpoint == "checkpoint-4"
        assert screen.query_one("#backend", RadioSet).pressed_button.name == "serve"
        assert screen.query_one("#url", Input).disabled and screen.query_one("#model", Select).disabled
        screen.query_one("#prompt-set", Select).value = str(tmp_path / "prompts" / "small.json")
        screen.query_one("#max-tokens", Input).value = "8"
        screen.query_one("#beside-base", Checkbox).value = True
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
    evals = sorted(p for p in (run_dir / "evals").iterdir() if p.is_dir())
    assert len(evals) == 2  # the checkpoint's and the base model's
    for _ in range(6000):  # the detached evals start the servers, then ask their cases
        infos = [load_eval(e) for e in evals]
        if all(i.state in ("completed", "failed") for i in infos):
            break
        time.sleep(0.1)
    by_checkpoint = {i.settings.checkpoint: i for i in infos}
    tuned, base = by_checkpoint["checkpoint-4"], by_checkpoint[None]
    assert (tuned.state, base.state) == ("completed", "completed"), (tuned.error, base.error)
    assert (tuned.done, base.done) == (2, 2)
    assert (tuned.settings.model, base.settings.model) == ("sft-demo-model-checkpoint-4", "demo-model")
    assert tuned.settings.tool_format == "hermes" and tuned.settings.max_tokens == 8
    assert all(r["error"] is None for e in evals for r in read_results(e))
    served = {s.model_id: s for s in list_servers(servers_dir, live_only=True)}
    assert {tuned.settings.url, base.settings.url} == {served["sft-demo-model-checkpoint-4"].url,
                                                        served["demo-model"].url}
    assert "starting transformers serve for" in (evals[0] / "eval.log").read_text()


# --- the servers screen -------------------------------------------------------------------------------------


def write_servers(runs_dir: Path) -> None:
    """Three servers as server.json leaves them: one ready, one stopped, one that crashed."""
    from synaptic_tui.servers.launch import Server, servers_root, write_server

    rows = [("20261120-093000-transformers-checkpoint-40", "transformers", "ready", 41001,
             "20261120-091500-sft-demo-model:checkpoint-40", "sft-demo-model-checkpoint-40", None),
            ("20261120-092000-mlx-smollm2", "mlx", "stopped", 41002, "smollm2", "smollm2-135m-instruct", None),
            ("20261120-091000-transformers-broken", "transformers", "failed", 41003, "broken", "broken",
             "transformers exited: ValueError: Unrecognized model in broken")]
    for server_id, engine, state, port, label, model_id, error in rows:
        path = servers_root(runs_dir) / server_id
        path.mkdir(parents=True)
        write_server(Server(server_id, engine, label, label, f"/k/{label}", port, f"http://127.0.0.1:{port}/v1",
                            model_id, {f"/k/{label}": model_id}, state, "transformers" if engine == "transformers"
                            else None, "hermes", started_at="2026-11-20T09:30:00+00:00", error=error, path=path))


def test_servers_screen(snap_compare, runs_dir, monkeypatch):
    from synaptic_tui.app import SynapticApp
    from synaptic_tui.services import Services

    monkeypatch.chdir(runs_dir.parent)
    write_servers(runs_dir)
    app = SynapticApp(Services(runs_dir=runs_dir))
    assert snap_compare(app, press=["s", "down", "down"], terminal_size=(140, 30))


@pytest.mark.slow
async def test_the_servers_screen_stops_a_real_server(servers_dir, demo_model):
    from textual.widgets import DataTable

    from synaptic_tui.app import SynapticApp
    from synaptic_tui.screens.servers import ServersScreen
    from synaptic_tui.services import Services

    server = serve(str(demo_model), servers_dir)
    app = SynapticApp(Services(runs_dir=servers_dir, refresh_seconds=0.2))
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.press("s")
        screen = app.screen
        assert isinstance(screen, ServersScreen)
        table = screen.query_one(DataTable)
        assert table.get_row(server["server_id"])[:2] == [server["server_id"], "transformers"]
        assert str(table.get_row(server["server_id"])[2]) == "ready"
        await pilot.press("x")
        for _ in range(600):
            await pilot.pause(0.1)
            if str(table.get_row(server["server_id"])[2]) == "stopped":
                break
        assert str(table.get_row(server["server_id"])[2]) == "stopped"
    assert trainer_alive(Path(server["path"])) is False
