"""Evals against real servers on loopback: mlx_lm.server with the demo model (OpenAI-compatible), and
tests/ollama_server.py speaking Ollama's documented API (the real Ollama cannot run here), forwarding to that
model or scripted to misbehave. The demo model's weights are random: these tests check the pipeline
(requests, streaming, records, tokens, files, resume), never pass rates of a real answer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO, write_run
from ollama_server import OllamaServer
from openai_loopback import OpenAIServer

from evaluator.clients import BackendError, OllamaClient
from evaluator.prompts import load_prompt_set
from evaluator.runner import create_eval, load_eval, new_settings, read_results, run_eval

PROMPTS = Path(__file__).parent / "fixtures" / "notes_cases.json"
# ollama/ollama docs/api.md, "Generate a chat completion": the last response of a chat.
OLLAMA_FINAL_FIELDS = {"model", "created_at", "message", "done", "done_reason", "total_duration", "load_duration",
                       "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(*args: str, module: str = "synaptic_tui.cli", cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="session")
def mlx_server(demo_model, tmp_path_factory):
    """mlx_lm.server serving the demo model on a free loopback port, for the whole session."""
    from synaptic_tui.serving import mlx_server as serve

    log = tmp_path_factory.mktemp("mlx-server") / "server.log"
    with serve(demo_model, log, timeout=180) as (url, model):
        yield {"url": url, "model": model}


@pytest.fixture
def small_set(tmp_path) -> Path:
    """The first four cases of the original prompt set (search, multi-tool, no-tool): quick on a CPU."""
    cases = json.loads(PROMPTS.read_text())[:4]
    path = tmp_path / "small.json"
    path.write_text(json.dumps(cases))
    return path


def check_records(eval_dir: Path, count: int, *, streamed: bool) -> list[dict]:
    records = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines()]
    assert len(records) == count
    for r in records:
        assert r["error"] is None, r["error"]
        assert isinstance(r["response"], str) and r["raw"]
        assert r["latency_s"] > 0 and r["prompt_tokens"] > 0 and 0 < r["completion_tokens"] <= 16
        assert r["checks"] and all({"name", "passed", "detail"} <= set(c) for c in r["checks"])
        assert (r["first_token_s"] is not None) == streamed
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["total"] == count and summary["errors"] == 0
    assert summary["tokens"]["completion"] == sum(r["completion_tokens"] for r in records)
    assert "## By tag" in (eval_dir / "report.md").read_text()
    assert load_eval(eval_dir).state == "completed"
    return records


# --- real model servers -------------------------------------------------------------------


@pytest.mark.slow
def test_eval_against_mlx_lm_server(mlx_server, small_set, tmp_path):
    out = run_cli("eval", "--backend", "openai", "--url", mlx_server["url"], "--model", mlx_server["model"],
                  "--prompt-set", str(small_set), "--max-tokens", "16", "--concurrency", "2",
                  "--evals-dir", str(tmp_path / "evals"), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "could not read the model list" not in out.stderr  # the model was found in /v1/models
    summary = json.loads(out.stdout)
    eval_dir = Path(summary["eval_dir"])
    assert eval_dir.parent == tmp_path / "evals" and summary["total"] == 4
    check_records(eval_dir, 4, streamed=True)
    settings = json.loads((eval_dir / "eval.json").read_text())["settings"]
    assert settings["url"] == mlx_server["url"] and settings["max_tokens"] == 16


@pytest.mark.slow
@pytest.mark.parametrize("stream", [True, False])
def test_eval_through_the_ollama_api_backed_by_the_real_model(mlx_server, small_set, tmp_path, runs_dir, stream):
    run_dir = write_run(runs_dir, "20261120-091500-sft-demo-model", final=True)
    with OllamaServer({"demo-model:latest": mlx_server["model"]}, upstream=mlx_server["url"]) as server:
        out = run_cli("run", "--backend", "ollama", "--url", server.url, "--model", "demo-model",
                      "--prompt-set", str(small_set), "--max-tokens", "16", "--run", "20261120",
                      "--runs-dir", str(runs_dir), *([] if stream else ["--no-stream"]), module="evaluator", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert len(server.requests) == 4
        body = server.requests[0]
        assert body["stream"] is stream and body["options"] == {"temperature": 0.0, "num_predict": 16}
        assert [t["function"]["name"] for t in body["tools"]][:2] == ["search_notes", "read_note"]
    evals = list((run_dir / "evals").iterdir())
    assert len(evals) == 1 and evals[0].name.endswith("-demo-model")
    records = check_records(evals[0], 4, streamed=stream)
    for record in records:  # the final chunk (or whole body) as Ollama's API documents it
        assert OLLAMA_FINAL_FIELDS <= set(record["raw"]), sorted(record["raw"])
        assert record["raw"]["done"] is True and record["raw"]["model"] == "demo-model"
        assert record["raw"]["eval_count"] == record["completion_tokens"]
    assert json.loads((evals[0] / "eval.json").read_text())["settings"]["run_id"] == run_dir.name
    assert "passed" in out.stdout and str(evals[0] / "report.md") in out.stdout


# --- Ollama API shape and faults (scripted) --------------------------------------------------------


def one_case(tmp_path: Path, case_id: str = "case-002") -> Path:
    case = next(c for c in json.loads(PROMPTS.read_text()) if c["id"] == case_id)
    path = tmp_path / "one.json"
    path.write_text(json.dumps([case]))
    return path


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("workspace", "reasons"), [
    ("ws_0c53", []),
    # The same call with the workspace id lost on the way: the one failing check says so.
    ("ws_0000", ["search_notes lacks workspaceId='ws_0c53'"]),
])
async def test_native_ollama_tool_calls_are_scored(tmp_path, stream, workspace, reasons):
    context = {"sessionId": "sess_e9ff0e", "workspaceId": "ws_0c53"}
    prompt_set = load_prompt_set(one_case(tmp_path))
    assert prompt_set.cases[0].expected_context == context
    reply = {"content": "", "tool_calls": [{"name": "search_notes", "arguments": {
        "query": "sourdough", "context": {**context, "workspaceId": workspace}}}]}
    with OllamaServer(reply=reply) as server:
        settings = new_settings("ollama", "demo-model", prompt_set, url=server.url, stream=stream)
        eval_dir = create_eval(settings, tmp_path / "evals")
        summary = await run_eval(eval_dir)
    record = read_results(eval_dir)[0]
    assert record["native_tool_calls"] == [{"function": {"index": 0, **reply["tool_calls"][0]}}]
    assert record["calls"] == [{**reply["tool_calls"][0], "source": "native"}]
    assert (record["passed"], record["reasons"]) == (not reasons, reasons)
    assert {c["name"]: c["passed"] for c in record["checks"]} == {
        "expected_tools": True, "no_unexpected_calls": True, "arguments_valid": True, "expected_context": not reasons}
    assert (summary["passed"], summary["failed"], summary["pass_rate"]) == (
        (1, 0, 1.0) if not reasons else (0, 1, 0.0))
    assert (record["prompt_tokens"], record["completion_tokens"], record["finish_reason"]) == (11, 3, "stop")


async def test_each_fault_is_recorded_and_the_eval_completes(tmp_path):
    prompt_set = load_prompt_set(PROMPTS)
    with OllamaServer(reply={"content": "hello"}, hang=3.0) as server:
        # One request at a time, so the faults meet the cases in order. Retries take faults too:
        # case 1 gets 500, 500, then an answer.
        server.faults = ["500", "500", None, "timeout", "malformed", "truncate", "stream_error", None]
        settings = new_settings("ollama", "demo-model", prompt_set, url=server.url, limit=6, concurrency=1,
                                timeout=0.5)
        eval_dir = create_eval(settings, tmp_path / "evals")
        summary = await run_eval(eval_dir, client=OllamaClient(server.url, timeout=0.5, backoff=0.01))
    records = {r["id"]: r for r in read_results(eval_dir)}
    ids = settings.case_ids
    assert records[ids[0]]["error"] is None and records[ids[0]]["attempts"] == 3
    # The two cases that got an answer ("hello", no call) fail as answers; a fault is an error, never a pass.
    assert {i: r["passed"] for i, r in records.items()} == dict.fromkeys(ids, False)
    assert [r["reasons"][0] for r in (records[ids[0]], records[ids[5]])] == [
        "did not call ['read_note', 'search_notes'] (called nothing)", "did not call ['create_note'] (called nothing)"]
    expected = {ids[1]: "timeout", ids[2]: "malformed", ids[3]: "truncated", ids[4]: "server"}
    assert {i: records[i]["error"]["kind"] for i in expected} == expected
    assert "stream line is not JSON" in records[ids[2]]["error"]["message"]
    assert "stream ended before its final 'done' message" in records[ids[3]]["error"]["message"]
    assert "an error was encountered while running the model" in records[ids[4]]["error"]["message"]
    assert records[ids[5]]["error"] is None
    assert (summary["total"], summary["passed"], summary["failed"], summary["errors"]) == (6, 0, 2, 4)
    assert load_eval(eval_dir).state == "completed"
    report = (eval_dir / "report.md").read_text()
    assert "## Errors (4)" in report and "[timeout]" in report


async def test_non_streaming_malformed_body_and_a_server_that_goes_away(tmp_path):
    prompt_set = load_prompt_set(PROMPTS)
    server = OllamaServer(reply={"content": "hello"}).start()
    server.faults = ["malformed", None, "shutdown"]
    settings = new_settings("ollama", "demo-model", prompt_set, url=server.url, limit=4, concurrency=1, stream=False)
    eval_dir = create_eval(settings, tmp_path / "evals")
    summary = await run_eval(eval_dir, client=OllamaClient(server.url, retries=2, backoff=0.01))
    records = [{r["id"]: r for r in read_results(eval_dir)}[i] for i in settings.case_ids]
    assert records[0]["error"]["kind"] == "malformed" and "not JSON" in records[0]["error"]["message"]
    assert records[1]["error"] is None
    assert records[2]["error"]["kind"] == "truncated"  # the connection closed with no answer
    assert records[3]["error"]["kind"] == "connect" and "after 3 attempts" in records[3]["error"]["message"]
    assert summary["total"] == 4 and load_eval(eval_dir).state == "completed"


async def test_the_ollama_server_sends_a_tool_call_streamed_in_pieces_whole():
    # OpenAI-style streaming: the name, then the arguments in fragments, then usage.
    piece = lambda **fn: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **({"id": "c1", "type": "function"} if "name" in fn else {}), "function": fn}]}, "finish_reason": None}]}  # noqa: E731,E501
    events = [piece(name="get_weather", arguments=""), piece(arguments='{"city": '), piece(arguments='"Oslo"}'),
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
              {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7}}]
    with OpenAIServer(models=("m",), events=events) as upstream:
        with OllamaServer({"m:latest": "m"}, upstream=upstream.url) as server:
            async with OllamaClient(server.url) as client:
                result = await client.chat("m", [{"role": "user", "content": "weather?"}], stream=True)
    assert result.tool_calls == [{"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}}]
    assert (result.prompt_tokens, result.completion_tokens) == (9, 7)
    assert OLLAMA_FINAL_FIELDS <= set(result.raw)


@pytest.mark.parametrize("stream", [True, False])
async def test_the_ollama_server_passes_an_upstream_failure_on_as_an_ollama_error(stream):
    with OpenAIServer(models=("m",)) as upstream:
        upstream.faults = ["500"]
        with OllamaServer({"m:latest": "m"}, upstream=upstream.url) as server:
            async with OllamaClient(server.url, retries=0) as client:
                with pytest.raises(BackendError) as err:
                    await client.chat("m", [{"role": "user", "content": "hi"}], stream=stream)
    assert err.value.status == 500 and str(err.value) == f"HTTP 500 from {server.url}/api/chat: injected 500"


@pytest.mark.parametrize("concurrency", [None, 2])
async def test_requests_in_flight_never_exceed_the_concurrency(tmp_path, concurrency):
    prompt_set = load_prompt_set(PROMPTS)
    with OllamaServer(reply={"content": "hi"}, latency=0.15) as server:
        options = {"concurrency": concurrency} if concurrency else {}
        settings = new_settings("ollama", "demo-model", prompt_set, url=server.url, limit=12, **options)
        eval_dir = create_eval(settings, tmp_path / "evals")
        summary = await run_eval(eval_dir)
    assert summary["total"] == 12 and summary["errors"] == 0
    # The default is 4 at once; each limit is reached (the server is slow enough) and never passed.
    assert server.max_in_flight == (concurrency or 4)


def test_an_eval_where_no_case_got_an_answer_exits_1(tmp_path):
    with OllamaServer() as server:
        server.faults = ["500"] * 3
        out = run_cli("eval", "--url", server.url, "--model", "demo-model", "--prompt-set", str(PROMPTS),
                      "--limit", "3", "--retries", "0", "--evals-dir", str(tmp_path / "evals"), cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert f"no case got an answer from {server.url}" in out.stderr
    [eval_dir] = (tmp_path / "evals").iterdir()
    assert json.loads((eval_dir / "summary.json").read_text())["errors"] == 3  # the report is still written


def test_missing_model_exits_1_with_what_to_pull(tmp_path):
    with OllamaServer() as server:
        out = run_cli("eval", "--url", server.url, "--model", "qwen3", "--prompt-set", str(PROMPTS),
                      "--evals-dir", str(tmp_path / "evals"), cwd=tmp_path)
    assert out.returncode == 1
    assert "model 'qwen3' is not served at" in out.stderr and "`ollama pull qwen3`" in out.stderr
    assert not (tmp_path / "evals").exists()


def test_killed_eval_resumes_with_only_the_missing_cases(tmp_path):
    evals = tmp_path / "evals"
    with OllamaServer(reply={"content": "hi"}, latency=0.3) as server:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(
            [sys.executable, "-m", "evaluator", "run", "--url", server.url, "--model", "demo-model",
             "--prompt-set", str(PROMPTS), "--limit", "10", "--concurrency", "1", "--evals-dir", str(evals)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                results = list(evals.glob("*/results.jsonl"))
                if results and len(results[0].read_text().splitlines()) >= 3:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the eval never wrote 3 results")
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        eval_dir = results[0].parent
        info = load_eval(eval_dir)
        assert info.state == "interrupted" and 3 <= info.done < 10 and info.total == 10
        done = {r["id"] for r in read_results(eval_dir)}
        settings = info.settings
        missing = [i for i in settings.case_ids if i not in done]
        questions = {c.id: (c.system, c.question) for c in load_prompt_set(PROMPTS).cases}
        server.requests.clear()

        out = run_cli("eval", "--resume", eval_dir.name, "--evals-dir", str(evals), "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        asked = [(b["messages"][0]["content"], b["messages"][-1]["content"]) for b in server.requests]
    assert sorted(asked) == sorted(questions[i] for i in missing)
    rows = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(settings.case_ids)
    assert json.loads(out.stdout)["total"] == 10
    assert load_eval(eval_dir).state == "completed"


def test_an_app_launched_eval_that_cannot_run_says_why(tmp_path):
    from synaptic_tui.screens.evaluate import launch_eval

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    settings = new_settings("ollama", "demo-model", load_prompt_set(PROMPTS), url=url, limit=2)
    eval_dir = create_eval(settings, tmp_path / "evals")
    launch_eval(eval_dir)
    deadline = time.monotonic() + 60
    while load_eval(eval_dir).state == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    info = load_eval(eval_dir)
    # Not `running` for ever: the reason the detached eval stopped is where the app reads it.
    assert info.state == "failed" and f"not reachable at {url}" in info.error


def test_ctrl_c_stops_an_eval_with_a_resume_command_that_works(tmp_path, runs_dir):
    run_dir = write_run(runs_dir, "20261120-091500-sft-demo-model", final=True)
    with OllamaServer(reply={"content": "hi"}, latency=0.3) as server:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(
            [sys.executable, "-m", "synaptic_tui.cli", "eval", "--url", server.url, "--model", "demo-model",
             "--prompt-set", str(PROMPTS), "--limit", "8", "--concurrency", "1", "--run", run_dir.name,
             "--runs-dir", str(runs_dir)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            results = list((run_dir / "evals").glob("*/results.jsonl"))
            if results and len(results[0].read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        eval_dir = results[0].parent
        assert f"resume with --resume {eval_dir}" in stderr
        # The live progress bar, one line per case when stderr is not a terminal.
        bars = re.findall(r"^\[(#*)(-*)\] (\d+)/8 cases  passed \d+  errors 0", stderr, re.M)
        assert bars and all(len(done) + len(todo) == 24 for done, todo, _ in bars)
        assert [int(n) for _, _, n in bars] == list(range(1, len(bars) + 1))
        assert load_eval(eval_dir).state == "interrupted"
        # The hint works from anywhere, though the eval is filed under a run and not in ./evals.
        out = run_cli("eval", "--resume", str(eval_dir), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"] == 8 and load_eval(eval_dir).state == "completed"


def test_compare_from_the_command_line(tmp_path):
    evals = tmp_path / "evals"
    with OllamaServer(reply={"content": "Hi! I can search, read and write notes."}) as server:
        for _ in range(2):
            out = run_cli("eval", "--url", server.url, "--model", "demo-model", "--prompt-set", str(PROMPTS),
                          "--tags", "no-tool", "--evals-dir", str(evals), cwd=tmp_path)
            assert out.returncode == 0, out.stderr
    a, b = sorted(p.name for p in evals.iterdir())
    out = run_cli("compare", a, b, "--evals-dir", str(evals), "--json", module="evaluator", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    comparison = json.loads(out.stdout)
    assert comparison["fixed"] == comparison["broken"] == [] and comparison["per_tag"]["no-tool"]["delta"] == 0.0
    out = run_cli("eval", "--compare", a, b, "--evals-dir", str(evals), cwd=tmp_path)
    assert out.returncode == 0 and "fixed (fail -> pass): 0" in out.stdout


@pytest.mark.slow
def test_mlx_lm_server_answers_behaviour_cases_and_judges_them(mlx_server, tmp_path):
    # The original's shape, sent no tools as the original did; the same real server is the judge.
    # Random weights: what is checked is that every behaviour check is accounted for, not how it went.
    prompt_set = EXAMPLES / "prompts" / "vault_behavior.json"
    out = run_cli("eval", "--backend", "openai", "--url", mlx_server["url"], "--model", mlx_server["model"],
                  "--prompt-set", str(prompt_set), "--no-tools", "--max-tokens", "16", "--concurrency", "2",
                  "--judge-url", mlx_server["url"], "--judge-model", mlx_server["model"],
                  "--evals-dir", str(tmp_path / "evals"), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["total"], summary["errors"]) == (8, 0)
    cases = {c.id: c for c in load_prompt_set(prompt_set).cases}
    records = read_results(Path(summary["eval_dir"]))
    from evaluator.behavior import ANTI_PATTERNS, EXPECTATIONS

    for record in records:
        case = cases[record["id"]]
        asked = ["response_type"] * bool(case.expected_response_type) + [*case.behavior_expectations,
                                                                         *case.anti_patterns]
        assert [c["name"] for c in record["behavior"]] == asked
        assert record["response_type"] in ("text_only", "tool_only", "tool_text", "empty")
        for check in record["behavior"]:
            assert check["verdict"] in ("pass", "fail", "not scored")
            assert (check["by"] is None) == (check["verdict"] == "not scored")
            behaviour = EXPECTATIONS.get(check["name"]) or ANTI_PATTERNS.get(check["name"])
            if behaviour is not None and behaviour.judged:
                assert check["judge"] is not None  # asked, answered or not
        assert record["behavior_verdict"] in ("pass", "fail", "not scored")
    checks = summary["behavior"]["checks"]
    assert checks["total"] == sum(len(r["behavior"]) for r in records) == 27
    assert checks["pass"] + checks["fail"] + checks["not_scored"] == checks["total"]
    judge = summary["judge"]
    judged_checks = sum(1 for r in records for c in r["behavior"] if c["judge"] is not None)
    assert judged_checks == 6 and judge["judged"] + judge["failed"] == judged_checks
    assert "## By expectation" in (Path(summary["eval_dir"]) / "report.md").read_text()


@pytest.mark.parametrize("stream", [True, False])
async def test_the_ollama_client_keeps_one_connection_and_names_a_stream_cut_short(stream):
    with OllamaServer(reply={"content": "a longer answer, in pieces"}) as server:
        async with OllamaClient(server.url, backoff=0) as client:
            answers = [await client.chat("demo-model", [{"role": "user", "content": "hi"}], stream=stream)
                       for _ in range(3)]
            assert await client.list_models() == ["demo-model:latest"]
            assert server.connections == 1  # read to the end of each answer, so the connection is reused
            if stream:  # the connection closed after the first line: no done message, no end of body
                server.faults = ["die"]
                with pytest.raises(BackendError) as err:
                    await client.chat("demo-model", [{"role": "user", "content": "hi"}])
                assert err.value.kind == "truncated" and "closed the connection mid-response" in str(err.value)
    assert [a.content for a in answers] == ["a longer answer, in pieces"] * 3
    assert [a.completion_tokens for a in answers] == [3, 3, 3]
