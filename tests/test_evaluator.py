"""The evaluator engine: prompt sets, scoring, and runs against the loopback Ollama (tests/ollama_server.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO
from ollama_server import OllamaServer

from evaluator import clients
from evaluator.clients import OllamaClient
from evaluator.prompts import PromptSetError, discover_prompt_sets, load_prompt_set, select_cases
from evaluator.runner import (EvalCannotRun, compare_evals, create_eval, list_evals, load_eval, new_settings,
                              preflight, read_results, run_eval)
from evaluator.scoring import aggregate, calls_from_text, find_calls, score_case, validate

# A fixed prompt set for the scoring rules (the shipped one is regenerated with the sample data).
PROMPTS = Path(__file__).parent / "fixtures" / "notes_cases.json"
SHIPPED = EXAMPLES / "prompts" / "tool_calling.json"
CONTEXT = {"sessionId": "sess_28636c", "workspaceId": "ws_f308"}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synaptic_tui.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})


def write_cases(path: Path, cases, shared=None) -> Path:
    document = cases if shared is None else {"tools": shared, "cases": cases}
    path.write_text(json.dumps(document))
    return path


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"]}}}


# --- prompt sets ------------------------------------------------------------------


def test_the_shipped_prompt_set_loads_and_offers_what_each_case_expects():
    prompt_set = load_prompt_set(SHIPPED)
    assert len(prompt_set.cases) == 24 and prompt_set.warnings == []
    assert {"read", "search", "create", "browse", "multi-step", "no-tool"} == set(prompt_set.tags)
    for case in prompt_set.cases:
        assert set(case.expected_tools) <= set(case.tool_schemas()), case.id
        assert (case.expected_tools == []) == ("no-tool" in case.tags), case.id


def test_a_tool_calling_set_in_todays_shape_loads():
    prompt_set = load_prompt_set(PROMPTS)
    assert len(prompt_set.cases) == 24
    first = prompt_set.cases[0]
    assert first.id == "case-001" and first.expected_tools == ["search_notes", "read_note"]
    assert first.expected_context == CONTEXT
    assert "search_notes" in first.tool_schemas()
    assert first.messages()[0]["role"] == "system" and first.messages()[1]["content"].startswith("Find the note")
    assert {"read", "search", "no-tool"} <= set(prompt_set.tags)
    assert len(prompt_set.sha256) == 64 and prompt_set.warnings == []


def test_object_with_shared_tools_and_jsonl_load(tmp_path):
    shared = write_cases(tmp_path / "shared.json", [{"id": 1, "question": "weather in Oslo?",
                                                      "expected_tools": ["get_weather"]}], shared=[TOOL])
    case = load_prompt_set(shared).cases[0]
    assert case.id == "1" and case.tools[0]["function"]["name"] == "get_weather"
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text('{"id": "a", "question": "q1", "tags": ["x"]}\n\n{"id": "b", "question": "q2"}\n')
    assert [c.id for c in load_prompt_set(jsonl).cases] == ["a", "b"]
    # A bare function object (no "type": "function" wrapper) is accepted and normalised.
    bare = write_cases(tmp_path / "bare.json", [{"id": "c", "question": "q", "tools": [TOOL["function"]]}])
    assert load_prompt_set(bare).cases[0].tools == [TOOL]


@pytest.mark.parametrize("cases, message", [
    ([{"id": "a", "question": "q"}, {"id": "b", "question": "q"}, {"id": "x", "question": "q", "expected_tools": "search"}],
     "case 3 (id 'x'): expected_tools: must be a list of strings"),
    ([{"id": "a"}], "case 1 (id 'a'): question: required, a non-empty string"),
    ([{"question": "q"}], "case 1: id: required, a string or number"),
    ([{"id": "a", "question": "q"}, {"id": "a", "question": "r"}], "case 2 (id 'a'): id: duplicate of case 1"),
    ([{"id": "a", "question": "q", "tags": "read"}], "case 1 (id 'a'): tags: must be a list of strings"),
    ([{"id": "a", "question": "q", "tools": [TOOL], "expected_tools": ["get_time"]}],
     "case 1 (id 'a'): expected_tools: 'get_time' is not among the tools offered (get_weather)"),
    ([{"id": "a", "question": "q", "expected_context": {"s": ["x"]}}],
     "case 1 (id 'a'): expected_context.s: must be a string or number"),
    ([{"id": "a", "question": "q", "tools": [{"function": {"parameters": {}}}]}],
     "case 1 (id 'a'): tools[0].function.name: must be a non-empty string"),
    ([], "no cases"),
])
def test_bad_cases_name_file_case_and_field(tmp_path, cases, message):
    path = write_cases(tmp_path / "set.json", cases)
    with pytest.raises(PromptSetError) as err:
        load_prompt_set(path)
    assert str(err.value) == f"{path}: {message}"


def test_jsonl_and_syntax_errors_carry_the_line(tmp_path):
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text('{"id": "a", "question": "q"}\n{"id": "b", "question": "q", "system": 3}\n')
    with pytest.raises(PromptSetError, match=r"set\.jsonl:2: case 2 \(id 'b'\): system: must be a string$"):
        load_prompt_set(jsonl)
    jsonl.write_text('{"id": "a", "question": "q"}\n{"id": "b", \n')
    with pytest.raises(PromptSetError, match=r"set\.jsonl:2: invalid JSON"):
        load_prompt_set(jsonl)
    broken = tmp_path / "set.json"
    broken.write_text('[\n  {"id": "a", "question": "q"},\n  {"id": }\n]')
    with pytest.raises(PromptSetError, match=r"set\.json:3: invalid JSON: Expecting value"):
        load_prompt_set(broken)


def test_unknown_fields_are_warnings_with_a_suggestion(tmp_path):
    path = write_cases(tmp_path / "set.json", [{"id": "a", "question": "q", "expected_tool": ["x"]}])
    prompt_set = load_prompt_set(path)
    assert prompt_set.warnings == [f"{path}: case 1 (id 'a'): unknown field 'expected_tool' ignored "
                                   "(did you mean 'expected_tools'?)"]


def test_select_by_tag_limit_and_seeded_shuffle():
    cases = load_prompt_set(PROMPTS).cases
    search = select_cases(cases, tags=["search"])
    assert search and all("search" in c.tags for c in search)
    assert [c.id for c in select_cases(cases, limit=3)] == ["case-001", "case-002", "case-003"]
    shuffled = [c.id for c in select_cases(cases, shuffle=True, seed=7, limit=5)]
    assert shuffled == [c.id for c in select_cases(cases, shuffle=True, seed=7, limit=5)]
    assert shuffled != [c.id for c in select_cases(cases, limit=5)]


def test_discover_prompt_sets_with_counts_and_errors(tmp_path):
    (tmp_path / "good.json").write_text(PROMPTS.read_text())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "small.jsonl").write_text('{"id": "a", "question": "q", "tags": ["t"]}\n')
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "notes.txt").write_text("not a prompt set")
    found = {info.name: info for info in discover_prompt_sets(tmp_path)}
    assert set(found) == {"good", "sub/small", "bad"}
    assert found["good"].count == 24 and found["sub/small"].tags == ["t"]
    assert found["bad"].count == 0 and "invalid JSON" in found["bad"].error


# --- finding and scoring calls ------------------------------------------------------


def test_calls_written_in_text_are_found():
    text = ('Sure.<tool_call>{"name": "search_notes", "arguments": {"query": "podcast"}}</tool_call>\n'
            '<tool_call>\n{"name": "read_note", "arguments": "{\\"path\\": \\"a.md\\"}"}\n</tool_call>')
    calls, errors = calls_from_text(text)
    assert [(c.name, c.arguments, c.source) for c in calls] == [
        ("search_notes", {"query": "podcast"}, "text"), ("read_note", {"path": "a.md"}, "text")]
    assert errors == []
    fenced = 'I will call:\n```json\n[{"name": "a", "arguments": {}}, {"name": "b", "parameters": {"x": 1}}]\n```'
    assert [(c.name, c.arguments) for c in calls_from_text(fenced)[0]] == [("a", {}), ("b", {"x": 1})]
    openai_shaped = '{"tool_calls": [{"type": "function", "function": {"name": "c", "arguments": "{}"}}]}'
    assert [c.name for c in calls_from_text(openai_shaped)[0]] == ["c"]
    assert calls_from_text("no calls here {not json} [1, 2]") == ([], [])


def test_a_call_cut_off_mid_json_is_reported():
    calls, errors = calls_from_text('<tool_call>{"name": "read_note", "arguments": {"pa')
    assert calls == [] and len(errors) == 1 and "holds no readable JSON" in errors[0]


def test_native_calls_win_over_text():
    native = [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    calls, _ = find_calls('<tool_call>{"name": "other", "arguments": {}}</tool_call>', native)
    assert [(c.name, c.source) for c in calls] == [("get_weather", "native")]
    openai = [{"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    assert find_calls("", openai)[0][0].arguments == {"city": "Oslo"}


def test_schema_validation_messages():
    schema = load_prompt_set(PROMPTS).cases[0].tool_schemas()["search_notes"]
    assert validate({"query": "x", "context": CONTEXT}, schema) == []
    assert validate({"query": 3, "limit": True, "context": {"sessionId": "s"}}, schema) == [
        "query: expected string, got integer",
        "limit: expected integer, got boolean",
        "context: missing required 'workspaceId'",
    ]
    assert validate({"query": "x", "limit": 99, "context": CONTEXT}, schema) == ["limit: 99 is not <= 50"]
    assert validate({"city": "Oslo", "unit": "k"}, TOOL["function"]["parameters"]) == [
        "unit: 'k' is not one of ['c', 'f']"]
    assert validate([], {"type": "object"}) == ["arguments: expected object, got array"]
    strict = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
              "additionalProperties": False}
    assert validate({"a": [1, "2"], "b": 0}, strict) == ["a[1]: expected integer, got string", "b: not an allowed property"]


def _case(**overrides):
    case = load_prompt_set(PROMPTS).cases[0]  # expects search_notes then read_note, with context ids
    for key, value in overrides.items():
        setattr(case, key, value)
    return case


def _call(name, **arguments):
    return {"function": {"name": name, "arguments": {**arguments, "context": dict(CONTEXT)}}}


def test_a_correct_answer_passes_every_check():
    score = score_case(_case(), "", [_call("read_note", path="ideas.md"), _call("search_notes", query="podcast")])
    assert score.passed, score.reasons
    assert [c.name for c in score.checks] == ["expected_tools", "no_unexpected_calls", "arguments_valid",
                                              "expected_context"]


def test_failures_say_why():
    lost_context = {"function": {"name": "read_note", "arguments": {"path": "x", "context": {"sessionId": "sess_28636c",
                                                                                            "workspaceId": "ws_0"}}}}
    score = score_case(_case(), "", [_call("search_notes", query="podcast"), lost_context, _call("create_note")])
    assert not score.passed
    assert score.reasons == [
        "unexpected calls: ['create_note']",
        "create_note: arguments: missing required 'path'; create_note: arguments: missing required 'content'",
        "read_note lacks workspaceId='ws_f308'",
    ]
    missing = score_case(_case(), "I could not find it.", [])
    assert missing.reasons == ["did not call ['read_note', 'search_notes'] (called nothing)",
                               "no tool call carried the context ids"]


def test_order_matters_only_when_the_case_says_so():
    calls = [_call("read_note", path="a"), _call("search_notes", query="q")]
    assert score_case(_case(), "", calls).passed
    ordered = score_case(_case(ordered=True), "", calls)
    assert ordered.reasons == ["expected ['search_notes', 'read_note'] in this order, called ['read_note', 'search_notes']"]


def test_no_tool_cases_fail_on_any_call():
    case = _case(expected_tools=[], expected_context=None)
    assert score_case(case, "Hello there!", None).passed
    assert score_case(case, "", [_call("search_notes", query="q")]).reasons == [
        "expected no tool call, called ['search_notes']"]


def test_expected_context_as_a_list_of_ids():
    case = _case(expected_context=["sess_28636c"], expected_tools=["search_notes"])
    assert score_case(case, "", [_call("search_notes", query="q")]).passed
    bad = {"function": {"name": "search_notes", "arguments": {"query": "q", "context": {"sessionId": "s",
                                                                                        "workspaceId": "w"}}}}
    assert score_case(case, "", [bad]).reasons == ["search_notes lacks 'sess_28636c'"]


def test_aggregate_by_tag_and_tool():
    results = [
        {"id": "1", "tags": ["read"], "expected_tools": ["read_note"], "passed": True,
         "calls": [{"name": "read_note"}], "latency_s": 1.0, "prompt_tokens": 10, "completion_tokens": 5},
        {"id": "2", "tags": ["read", "search"], "expected_tools": ["search_notes"], "passed": False,
         "calls": [{"name": "read_note"}], "latency_s": 3.0, "prompt_tokens": 10, "completion_tokens": 7},
        {"id": "3", "tags": [], "expected_tools": [], "passed": False, "error": {"kind": "timeout"}, "calls": []},
    ]
    summary = aggregate(results)
    assert (summary["total"], summary["passed"], summary["failed"], summary["errors"]) == (3, 1, 1, 1)
    assert summary["pass_rate"] == 0.3333
    assert summary["per_tag"]["read"] == {"total": 2, "passed": 1, "errors": 0, "not_scored": 0, "pass_rate": 0.5,
                                          "tool_pass_rate": 0.5, "behavior_pass_rate": None}
    assert summary["per_tag"]["(untagged)"]["errors"] == 1
    assert summary["per_tool"]["read_note"] == {"cases": 1, "called": 1, "passed": 1, "unexpected": 1, "pass_rate": 1.0}
    assert summary["per_tool"]["search_notes"]["called"] == 0
    assert summary["latency_s"]["mean"] == 2.0 and summary["tokens"] == {"prompt": 20, "completion": 12}


# --- the Ollama client and the runner, against the loopback Ollama (tests/ollama_server.py) ----------
# The OpenAI client's streaming, faults and retries: tests/test_openai_client.py.


async def test_ollama_non_streaming_tool_calls_and_options():
    reply = {"content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}
    with OllamaServer(reply=reply) as server:
        async with OllamaClient(server.url) as client:
            result = await client.chat("demo-model", [{"role": "user", "content": "w?"}], [TOOL], temperature=0.2,
                                       top_p=0.9, max_tokens=64, stream=False)
    seen = server.requests[0]
    assert seen["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 64} and seen["stream"] is False
    assert seen["tools"] == [TOOL]
    assert (result.prompt_tokens, result.completion_tokens, result.finish_reason) == (11, 3, "stop")
    calls, _ = find_calls(result.content, result.tool_calls)
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Oslo"})]


async def test_an_ollama_model_is_found_under_its_latest_tag_or_named_missing():
    with OllamaServer({"qwen:latest": "qwen"}) as server:
        with pytest.raises(EvalCannotRun, match=r"model 'demo' is not served at .* \(it lists: qwen:latest\); "
                                                r"`ollama pull demo`"):
            await preflight(new_settings("ollama", "demo", load_prompt_set(PROMPTS), url=server.url))
        assert await preflight(new_settings("ollama", "qwen", load_prompt_set(PROMPTS), url=server.url)) == []


# --- running, resuming, comparing (a loopback Ollama answering by case) -------------------------


def answering(good: set[str], log: list[str]):
    """Answers for the loopback Ollama: correct tool calls for the cases in `good`, text without calls otherwise."""
    cases = {(c.system, c.question): c for c in load_prompt_set(PROMPTS).cases}

    def answer(body: dict) -> dict:
        case = cases[(body["messages"][0]["content"], body["messages"][-1]["content"])]
        log.append(case.id)
        calls = []
        if case.id in good:
            for name in case.expected_tools or []:
                required = case.tool_schemas()[name].get("required", [])
                args = {k: "x" for k in required if k != "context"}
                args["context"] = dict(case.expected_context)
                calls.append({"name": name, "arguments": args})
        return {"content": "done", "tool_calls": calls}
    return answer


async def test_run_eval_writes_results_as_cases_finish_then_resumes_only_missing(tmp_path):
    prompt_set = load_prompt_set(PROMPTS)
    asked: list[str] = []
    seen: list[str] = []
    with OllamaServer(answer=answering({"case-001", "case-002"}, asked)) as server:
        settings = new_settings("ollama", "demo-model", prompt_set, url=server.url, limit=8, stream=False,
                                concurrency=3)
        eval_dir = create_eval(settings, tmp_path / "evals")

        def on_result(record):
            # Each record is on disk before the callback hears of it.
            assert record["id"] in {r["id"] for r in read_results(eval_dir)}
            seen.append(record["id"])

        summary = await run_eval(eval_dir, on_result=on_result)
    assert sorted(seen) == sorted(asked) == settings.case_ids
    # The two answered correctly pass, and so does case-003, which expects no call and got none; the rest fail.
    assert {r["id"]: r["passed"] for r in read_results(eval_dir)} == {
        case_id: case_id in ("case-001", "case-002", "case-003") for case_id in settings.case_ids}
    assert (summary["total"], summary["passed"], summary["failed"], summary["errors"]) == (8, 3, 5, 0)
    assert {p.name for p in eval_dir.iterdir()} == {"eval.json", "results.jsonl", "summary.json", "report.md"}
    assert load_eval(eval_dir).state == "completed"
    record = json.loads((eval_dir / "results.jsonl").read_text().splitlines()[0])
    assert {"prompt", "response", "raw", "calls", "checks", "passed", "reasons", "latency_s",
            "prompt_tokens", "completion_tokens"} <= set(record)
    report = (eval_dir / "report.md").read_text()
    assert "## By tag" in report and "| search |" in report and "## Failures" in report

    # Cut the eval back to 3 results plus half a line (a kill mid-write), then resume.
    lines = (eval_dir / "results.jsonl").read_text().splitlines(keepends=True)
    (eval_dir / "results.jsonl").write_text("".join(lines[:3]) + lines[3][:40])
    kept = [json.loads(line)["id"] for line in lines[:3]]
    asked.clear()
    started = []
    with OllamaServer(answer=answering(set(), asked)) as server:
        await run_eval(eval_dir, url=server.url, on_start=lambda done, total: started.append((done, total)))
    assert started == [(3, 8)]
    assert sorted(asked) == sorted(set(settings.case_ids) - set(kept))
    rows = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == settings.case_ids  # every case once, no broken line


async def test_compare_two_evals_flips_and_tag_deltas(tmp_path):
    prompt_set = load_prompt_set(PROMPTS)
    dirs = []
    for good in ({"case-001", "case-002"}, {"case-002", "case-004"}):
        with OllamaServer(answer=answering(good, [])) as server:
            settings = new_settings("ollama", "demo-model", prompt_set, url=server.url, limit=4, stream=False)
            eval_dir = create_eval(settings, tmp_path / "evals")
            await run_eval(eval_dir)
        dirs.append(eval_dir)
    assert dirs[0] != dirs[1]  # same second: the id gets a suffix
    comparison = compare_evals(*dirs)
    assert [e["id"] for e in comparison["fixed"]] == ["case-004"]
    assert [e["id"] for e in comparison["broken"]] == ["case-001"]
    assert comparison["broken"][0]["reasons_after"]
    assert comparison["per_tag"]["multi-tool"] == {"a": 1.0, "b": 0.0, "delta": -1.0}
    assert comparison["overall"]["delta"] == 0.0
    assert [e.path for e in list_evals(tmp_path / "evals")] == sorted(dirs, reverse=True)


async def test_resume_refuses_a_changed_prompt_set(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(PROMPTS.read_text())
    with OllamaServer() as server:
        eval_dir = create_eval(new_settings("ollama", "demo-model", load_prompt_set(path), url=server.url, limit=2),
                               tmp_path / "evals")
        path.write_text(PROMPTS.read_text().replace("podcast", "garden"))
        with pytest.raises(EvalCannotRun, match="changed since this eval started"):
            await run_eval(eval_dir)
    assert server.requests == []


# --- command line --------------------------------------------------------------------


def test_eval_bad_input_exits_2_with_one_clear_line(tmp_path):
    bad = write_cases(tmp_path / "bad.json", [{"id": "a", "question": "q"}, {"id": "b", "question": "q"},
                                              {"id": "x", "question": "q", "expected_tools": "search"}])
    out = cli("eval", "--model", "m", "--prompt-set", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"synaptic-tui eval: {bad}: case 3 (id 'x'): expected_tools: must be a list of strings"
    out = cli("eval", "--prompt-set", str(PROMPTS), cwd=tmp_path)
    assert out.returncode == 2 and "--model required" in out.stderr
    out = cli("eval", "--model", "m", "--prompt-set", str(PROMPTS), "--tags", "search,nope", cwd=tmp_path)
    assert out.returncode == 2 and "--tags: nope not in" in out.stderr
    out = cli("eval", "--model", "m", "--prompt-set", str(PROMPTS), "--concurrency", "0", cwd=tmp_path)
    assert out.returncode == 2 and "must be at least 1" in out.stderr
    out = cli("eval", "--resume", "nope", "--evals-dir", str(tmp_path / "evals"), cwd=tmp_path)
    assert out.returncode == 2 and "no eval 'nope' in" in out.stderr
    assert not (tmp_path / "evals").exists()


def test_server_down_exits_1_naming_the_url_and_what_to_start(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for backend, hint in (("ollama", "ollama serve"), ("openai", "mlx_lm.server --model")):
        url = f"http://127.0.0.1:{port}" + ("/v1" if backend == "openai" else "")
        out = cli("eval", "--backend", backend, "--url", url, "--model", "m", "--prompt-set", str(PROMPTS),
                  "--evals-dir", str(tmp_path / "evals"), cwd=tmp_path)
        assert out.returncode == 1, out.stderr
        assert f"is not reachable at {url}" in out.stderr and hint in out.stderr
    assert not (tmp_path / "evals").exists()  # nothing half-made


def test_evaluator_imports_no_ml_library_and_no_textual():
    code = ("import sys, evaluator, evaluator.cli, evaluator.clients, evaluator.prompts, evaluator.runner, "
            "evaluator.scoring, evaluator.report, evaluator.behavior, evaluator.judge\n"
            "bad = [m for m in ('torch','transformers','trl','peft','unsloth','mlx','datasets','accelerate','textual')"
            " if m in sys.modules]\nprint(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_parser_has_the_eval_options():
    from synaptic_tui.cli import build_parser

    args = build_parser().parse_args(["eval", "--backend", "openai", "--model", "m", "--prompt-set", "p.json",
                                      "--concurrency", "8", "--tags", "a,b", "--limit", "3", "--temperature", "0.5",
                                      "--run", "R", "--json"])
    assert (args.backend, args.concurrency, args.tags, args.limit, args.temperature, args.run, args.json) == (
        "openai", 8, "a,b", 3, 0.5, "R", True)
    assert clients.default_url("openai") == "http://127.0.0.1:1234/v1"
