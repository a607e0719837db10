"""Whole evals of prompt sets in the original shape against real loopback servers: a scripted
OpenAI-compatible model and a judge that reads rubrics (tests/openai_server.py). Rates, report,
judge cache across resume and repeat, --tools/--no-tools, --repeats, --fail-under, compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from openai_server import OpenAIServer, judge_by_rubric, scripted

from evaluator.prompts import load_prompt_set
from evaluator.report import render_comparison
from evaluator.runner import compare_evals, create_eval, new_settings, read_results, run_eval

FIXTURES = Path(__file__).parent / "fixtures"
BEHAVIOUR_SET = FIXTURES / "original_behavior.json"
TOOL_SET = FIXTURES / "original_tool_calling.json"
TOOLS = FIXTURES / "original_tools.json"
SESSION, WS, WS2 = "session_1754000000000_fixture01", "ws_1754000000000_harbour", "ws_1754000000001_orchard"
QUESTIONS = {c.id: c.question for c in load_prompt_set(BEHAVIOUR_SET).cases}


def ctx(workspace=WS, **more):
    return {"sessionId": SESSION, "workspaceId": workspace, **more}


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


MEMORY = "Earlier the user listed three pier permit notes: pier-a.md, pier-b.md and pier-c.md."
LONG = ("I am going to search your notes for the ferry timetable now, with a generous limit so that nothing is "
        "missed, and then I will tell you about everything I find.")
REPLIES = {
    "IH_vague_delete": {"content": "Which drafts do you mean: the harbour ones or the orchard ones?"},
    "EP_synthesis": {"content": "", "tool_calls": [call("content_createContent", path="review.md", content="A review.",
                                                        context=ctx())]},
    # sessionMemory is long enough, but the call carries no toolContext at all.
    "CC_folder_memory": {"content": "", "tool_calls": [call("vault_createFolder", path="Projects/Harbour/permits",
                                                            context=ctx(sessionMemory=MEMORY))]},
    "CE_search_limit": {"content": LONG, "tool_calls": [call("librarian_searchContent", query="ferry timetable",
                                                             limit=500, context=ctx())]},
    "ERA_no_results": {"content": "I could not find any notes about the lighthouse. You could search the archive "
                                  "instead."},
    "WA_pick_workspace": {"content": "Adding today's notes to the Orchard log now, as asked by you.",
                          "tool_calls": [call("content_appendContent", path="Garden/log.md", content="notes",
                                              context=ctx(WS2))]},
}
GOOD = {  # what a model that learnt every behaviour would answer to the ones above it gets wrong
    "EP_synthesis": {"content": "", "tool_calls": [call("agents_executePrompt", prompt="Review the papers",
                                                        context=ctx())]},
    "WA_pick_workspace": {"content": "I am adding these to the Harbour log because the notes are about the pier.",
                          "tool_calls": [call("content_appendContent", path="Projects/Harbour/log.md",
                                              content="notes", context=ctx())]},
}


def model(replies):
    return scripted({QUESTIONS[case_id]: reply for case_id, reply in replies.items()})


def cli(*args, env=None, cwd):
    return subprocess.run([sys.executable, "-m", "evaluator", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=300)


async def run(server, path, root, judge=True, **options):
    settings = new_settings("openai", "m", load_prompt_set(path), url=server.url, stream=False,
                            judge_url=server.url if judge else None, judge_model="judge" if judge else None,
                            **options)
    eval_dir = create_eval(settings, root)
    return eval_dir, await run_eval(eval_dir)


def checks_of(eval_dir):
    return {r["id"]: {c["name"]: (c["verdict"], c["by"]) for c in r["behavior"]} for r in read_results(eval_dir)}


async def test_the_behaviour_set_is_scored_check_by_check(tmp_path):
    with OpenAIServer({"m": model(REPLIES), "judge": judge_by_rubric}) as server:
        eval_dir, summary = await run(server, BEHAVIOUR_SET, tmp_path / "evals")
    assert checks_of(eval_dir) == {
        "IH_vague_delete": {"response_type": ("pass", "rule"), "asks_for_user_input": ("pass", "judge"),
                            "does_not_call_tool": ("pass", "rule"), "immediate_tool_call": ("pass", "rule"),
                            "assumes_user_choice": ("pass", "rule")},
        "EP_synthesis": {"delegates_complex_task": ("fail", "rule"), "uses_execute_prompt": ("fail", "rule"),
                         "creates_shallow_content_directly": ("fail", "rule")},
        "CC_folder_memory": {"sessionMemory_min_chars": ("pass", "rule"), "toolContext_explains_why": ("fail", "rule")},
        "CE_search_limit": {"response_type": ("fail", "rule"), "uses_appropriate_limit": ("fail", "rule"),
                            "minimal_or_no_explanation": ("fail", "rule"), "excessive_limit": ("fail", "rule"),
                            "excessive_explanation": ("fail", "rule")},
        "ERA_no_results": {"response_type": ("pass", "rule"), "acknowledges_no_results": ("pass", "judge"),
                           "suggests_alternatives": ("pass", "judge"), "auto_broadens_search": ("pass", "rule")},
        "WA_pick_workspace": {"response_type": ("pass", "rule"), "explains_choice": ("fail", "judge"),
                              "then_calls_tool": ("pass", "rule"), "appends_content": ("pass", "rule"),
                              "silent_choice": ("pass", "rule")},
    }
    records = {r["id"]: r for r in read_results(eval_dir)}
    assert {i: (r["tool_verdict"], r["behavior_verdict"], r["verdict"]) for i, r in records.items()} == {
        "IH_vague_delete": (None, "pass", "pass"), "EP_synthesis": ("fail", "fail", "fail"),
        "CC_folder_memory": ("pass", "fail", "fail"), "CE_search_limit": ("pass", "fail", "fail"),
        "ERA_no_results": (None, "pass", "pass"), "WA_pick_workspace": ("pass", "fail", "fail")}
    assert records["CE_search_limit"]["response_type"] == "tool_text"
    assert records["IH_vague_delete"]["notes"].startswith("Vague target for a destructive action")
    assert records["WA_pick_workspace"]["reasons"] == ["explains_choice: read by the 'why' rule (judge)"]
    assert (summary["total"], summary["passed"], summary["failed"], summary["not_scored"]) == (6, 2, 4, 0)
    assert summary["pass_rate"] == 0.3333
    assert summary["tool_calls"] == {"cases": 4, "passed": 3, "failed": 1, "not_scored": 0, "pass_rate": 0.75}
    assert {k: summary["behavior"][k] for k in ("cases", "passed", "failed", "not_scored", "pass_rate")} == {
        "cases": 6, "passed": 2, "failed": 4, "not_scored": 0, "pass_rate": 0.3333}
    assert summary["behavior"]["checks"] == {"total": 24, "pass": 14, "fail": 10, "not_scored": 0}
    assert summary["per_expectation"]["explains_choice"] == {"kind": "expectation", "total": 1, "pass": 0, "fail": 1,
                                                             "not_scored": 0, "by_judge": 1, "by_rule": 0,
                                                             "pass_rate": 0.0}
    assert summary["per_expectation"]["response_type"]["pass_rate"] == 0.75
    # The judge decided four checks and answered a fifth that the rule settled; they agreed on it.
    assert {k: summary["judge"][k] for k in ("judged", "decided", "cached", "failed", "compared", "agreed",
                                             "agreement", "model")} == {
        "judged": 5, "decided": 4, "cached": 0, "failed": 0, "compared": 1, "agreed": 1, "agreement": 1.0,
        "model": "judge"}
    assert summary["per_tag"]["destructive"] == {"total": 1, "passed": 1, "errors": 0, "not_scored": 0,
                                                 "pass_rate": 1.0, "tool_pass_rate": None, "behavior_pass_rate": 1.0}
    # Ten at most, most frequent first; here every failure is its own, in case order.
    assert len(summary["failure_reasons"]) == 10
    assert summary["failure_reasons"][0] == {
        "reason": "expected_tools: did not call […] (called […])", "count": 1, "cases": ["EP_synthesis"],
        "example": "did not call ['agents_executePrompt'] (called ['content_createContent'])"}
    assert summary["failure_reasons"][1]["reason"] == "delegates_complex_task (expectation) failed"
    report = (eval_dir / "report.md").read_text()
    assert "- **Pass rate: 33.3%** overall; tool calls 75.0% (3 of 4 cases); behaviour 33.3% (2 of 6 cases)" in report
    assert "| explains_choice | expectation | 1 | 0 | 1 | 0 | 1 | 0.0% |" in report
    assert "  - explains_choice [fail (judge)]: read by the 'why' rule" in report
    assert "- Judge: `judge`; 4 verdicts from the judge, 5 checks judged (0 from the cache), 0 unanswered; " \
           "agreement with the rules where both ran: 100.0% (1 of 1)" in report
    assert "## Not scored (0 checks)" in report


async def test_without_a_judge_the_report_counts_what_needs_one(tmp_path):
    with OpenAIServer({"m": model(REPLIES)}) as server:
        eval_dir, summary = await run(server, BEHAVIOUR_SET, tmp_path / "evals", judge=False)
    checks = checks_of(eval_dir)
    assert checks["IH_vague_delete"]["asks_for_user_input"] == ("not scored", None)
    assert checks["CC_folder_memory"]["toolContext_explains_why"] == ("fail", "rule")  # no toolContext: no doubt
    assert summary["behavior"]["checks"] == {"total": 24, "pass": 11, "fail": 9, "not_scored": 4}
    assert summary["behavior"]["not_scored_why"] == {"needs a judge": 4}
    # A case with an unscored check and no failed one is not scored, never passed.
    behaviour = summary["behavior"]
    assert (behaviour["passed"], behaviour["failed"], behaviour["not_scored"]) == (0, 3, 3)
    assert (summary["passed"], summary["failed"], summary["not_scored"], summary["pass_rate"]) == (0, 3, 3, 0.0)
    report = (eval_dir / "report.md").read_text()
    assert "4 not scored (4: needs a judge)" in report
    assert "- Judge: none (checks that need reading are not scored; give --judge-url and --judge-model)" in report
    assert "## Not scored (4 checks)" in report
    assert "- **ERA_no_results** suggests_alternatives: " in report


async def test_resumed_and_repeated_evals_do_not_ask_the_judge_again(tmp_path):
    with OpenAIServer({"m": model(REPLIES), "judge": judge_by_rubric}) as server:
        eval_dir, first = await run(server, BEHAVIOUR_SET, tmp_path / "evals")
        judged = len(server.asked("judge"))
        assert judged == 5
        lines = (eval_dir / "results.jsonl").read_text().splitlines(keepends=True)
        (eval_dir / "results.jsonl").write_text("".join(lines[:2]))  # as if killed after two cases
        resumed = await run_eval(eval_dir)
        assert len(server.asked("m")) == 6 + 4 and len(server.asked("judge")) == judged
        _, repeated = await run(server, BEHAVIOUR_SET, tmp_path / "evals")
        assert len(server.asked("judge")) == judged
    for summary in (resumed, repeated):
        assert summary["pass_rate"] == first["pass_rate"] and summary["judge"]["decided"] == 4
    assert repeated["judge"]["cached"] == 5
    cache = [json.loads(line) for line in (tmp_path / "evals" / "judge-cache.jsonl").read_text().splitlines()]
    assert len(cache) == 5 and {e["judge"] for e in cache} == {"judge"}


async def test_compare_shows_behaviour_flips(tmp_path):
    with OpenAIServer({"m": model(REPLIES), "judge": judge_by_rubric}) as server:
        base, _ = await run(server, BEHAVIOUR_SET, tmp_path / "evals")
    with OpenAIServer({"m": model({**REPLIES, **GOOD}), "judge": judge_by_rubric}) as server:
        tuned, _ = await run(server, BEHAVIOUR_SET, tmp_path / "evals")
    comparison = compare_evals(base, tuned)
    assert [e["id"] for e in comparison["fixed"]] == ["EP_synthesis", "WA_pick_workspace"]
    assert comparison["broken"] == [] and comparison["behavior_broken"] == []
    assert [(e["id"], e["check"]) for e in comparison["behavior_fixed"]] == [
        ("EP_synthesis", "creates_shallow_content_directly"), ("EP_synthesis", "delegates_complex_task"),
        ("EP_synthesis", "uses_execute_prompt"), ("WA_pick_workspace", "explains_choice")]
    assert comparison["behavior"] == {"a": 0.3333, "b": 0.6667, "delta": 0.3334}
    assert comparison["tool_calls"] == {"a": 0.75, "b": 1.0, "delta": 0.25}
    text = render_comparison(comparison)
    assert "behaviour 33.3% -> 66.7% (+33.3 points)" in text
    assert "behaviour checks fixed: 4\n  EP_synthesis creates_shallow_content_directly" in text


def test_tools_from_a_file_are_offered_and_checked_and_no_tools_sends_none(tmp_path):
    tool_set = load_prompt_set(TOOL_SET)
    own = {"type": "function", "function": {"name": "librarian_searchContent", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
    cases = json.loads(TOOL_SET.read_text())[:2]
    cases[0]["tools"] = [own]  # a case's own tools win over --tools
    path = tmp_path / "set.json"
    path.write_text(json.dumps(cases))
    replies = {tool_set.cases[0].question: {"content": "", "tool_calls": [call("librarian_searchContent", query="x",
                                                                               context=ctx())]},
               tool_set.cases[1].question: {"content": "", "tool_calls": [call("content_readContent",
                                                                               context=ctx())]}}
    file_tools = json.loads(TOOLS.read_text())
    with OpenAIServer({"m": scripted(replies)}) as server:
        for flags in (["--tools", str(TOOLS)], ["--tools", str(TOOLS), "--no-tools"]):
            out = cli("run", "--backend", "openai", "--url", server.url, "--model", "m", "--prompt-set", str(path),
                      "--concurrency", "1", "--evals-dir", str(tmp_path / "evals"), "--json", *flags, cwd=tmp_path)
            assert out.returncode == 0, out.stderr
            eval_dir = Path(json.loads(out.stdout)["eval_dir"])
            records = {r["id"]: r for r in read_results(eval_dir)}
            # Arguments are checked against the file whether or not tools were sent.
            assert records["content_readContent"]["reasons"] == [
                "content_readContent: arguments: missing required 'path'"]
            assert records["librarian_searchContent"]["passed"]  # its own schema: no context required
        offered = [b.get("tools") for b in server.asked("m")]
    assert offered == [[own], file_tools, None, None]


def test_a_tools_file_missing_an_expected_tool_is_refused(tmp_path):
    partial = tmp_path / "tools.json"
    partial.write_text(json.dumps(json.loads(TOOLS.read_text())[:1]))
    out = cli("run", "--model", "m", "--prompt-set", str(TOOL_SET), "--tools", str(partial),
              "--evals-dir", str(tmp_path / "evals"), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"python -m evaluator: {TOOL_SET}: case 'content_readContent': expected_tools: "
                                  f"'content_readContent' is not in --tools {partial}")
    assert not (tmp_path / "evals").exists()


def test_repeats_report_mean_spread_and_pass_all_then_resume_the_missing_tries(tmp_path):
    cases = json.loads(BEHAVIOUR_SET.read_text())
    path = tmp_path / "two.json"
    path.write_text(json.dumps([cases[0], cases[4]]))  # IH_vague_delete, ERA_no_results: no judge needed here
    for case in (cases[0], cases[4]):
        case["behavior_expectations"] = {}
    path.write_text(json.dumps([cases[0], cases[4]]))
    bad = {"content": "", "tool_calls": [call("librarian_searchContent", query="drafts", context=ctx())]}
    replies = {cases[0]["question"]: REPLIES["IH_vague_delete"],
               cases[4]["question"]: [REPLIES["ERA_no_results"], bad, REPLIES["ERA_no_results"]]}
    evals = tmp_path / "evals"
    with OpenAIServer({"m": scripted(replies)}) as server:
        refused = cli("run", "--backend", "openai", "--url", server.url, "--model", "m", "--prompt-set", str(path),
                      "--repeats", "3", "--evals-dir", str(evals), cwd=tmp_path)
        assert refused.returncode == 2 and "--repeats needs --temperature above 0" in refused.stderr
        out = cli("run", "--backend", "openai", "--url", server.url, "--model", "m", "--prompt-set", str(path),
                  "--repeats", "3", "--temperature", "0.7", "--concurrency", "1", "--evals-dir", str(evals), "--json",
                  cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert [b["temperature"] for b in server.asked("m")] == [0.7] * 6
        eval_dir = Path(summary["eval_dir"])
        assert sorted((r["id"], r["try"]) for r in read_results(eval_dir)) == [
            (c, t) for c in ("ERA_no_results", "IH_vague_delete") for t in (1, 2, 3)]
        assert summary["repeats"] == {
            "tries": 3, "cases": 2,
            "pass_rate": {"per_try": [1.0, 0.5, 1.0], "mean": 0.8333, "stdev": 0.2357, "min": 0.5, "max": 1.0},
            # Only the second try of ERA_no_results called a tool: its context ids are checked, and right.
            "tool_calls": {"per_try": [None, 1.0, None], "mean": 1.0, "stdev": 0.0, "min": 1.0, "max": 1.0},
            "behavior": {"per_try": [1.0, 0.5, 1.0], "mean": 0.8333, "stdev": 0.2357, "min": 0.5, "max": 1.0},
            "pass_all": 0.5, "pass_all_cases": 1}
        assert (summary["total"], summary["planned"], summary["passed"]) == (6, 6, 5)
        report = (eval_dir / "report.md").read_text()
        assert "- Repeats: 3 tries of 2 cases; pass rate mean 83.3%, spread 50.0% to 100.0% (stdev 23.6%); " \
               "pass^3 (every try passed) 50.0%" in report
        assert ("- **ERA_no_results** try 2 (expected no tool; called librarian_searchContent; reply tool_only)"
                in report)

        lines = (eval_dir / "results.jsonl").read_text().splitlines(keepends=True)
        (eval_dir / "results.jsonl").write_text("".join(lines[:4]))
        server.requests.clear()
        out = cli("run", "--resume", str(eval_dir), "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert len(server.asked("m")) == 2  # only the two missing tries
    assert len(read_results(eval_dir)) == 6


def test_fail_under_gates_ci_on_the_overall_pass_rate(tmp_path):
    with OpenAIServer({"m": model(REPLIES), "judge": judge_by_rubric}) as server:
        base = ["run", "--backend", "openai", "--url", server.url, "--model", "m", "--prompt-set", str(BEHAVIOUR_SET),
                "--judge-url", server.url, "--judge-model", "judge", "--evals-dir", str(tmp_path / "evals")]
        below = cli(*base, "--fail-under", "0.8", cwd=tmp_path)
        above = cli(*base, "--fail-under", "30%", cwd=tmp_path)
        plain = cli(*base, cwd=tmp_path)
    assert below.returncode == 2
    assert "python -m evaluator: pass rate 33.3% is below --fail-under 80.0%" in below.stderr
    assert (above.returncode, plain.returncode) == (0, 0)
    assert "overall 33.3%; tool calls 75.0% (3/4); behaviour 33.3% (2/6)" in plain.stdout
    out = cli("run", "--model", "m", "--prompt-set", str(BEHAVIOUR_SET), "--fail-under", "1.5", cwd=tmp_path)
    assert out.returncode == 2 and "must be between 0 and 1" in out.stderr


def test_the_judge_must_be_there_and_its_key_is_never_written(tmp_path):
    secret = "sk-loopback-0123456789abcdef"
    evals = tmp_path / "evals"
    with OpenAIServer({"m": model(REPLIES), "judge": judge_by_rubric}) as server:
        base = ["run", "--backend", "openai", "--url", server.url, "--model", "m", "--prompt-set", str(BEHAVIOUR_SET),
                "--evals-dir", str(evals)]
        lonely = cli(*base, "--judge-url", server.url, cwd=tmp_path)
        assert lonely.returncode == 2 and "--judge-url needs --judge-model" in lonely.stderr
        missing = cli(*base, "--judge-url", server.url, "--judge-model", "gpt-judge", cwd=tmp_path)
        assert missing.returncode == 1
        assert f"judge model 'gpt-judge' is not served at {server.url} (it lists: m, judge)" in missing.stderr
        assert not evals.exists()
        out = cli(*base, "--judge-url", server.url, "--judge-model", "judge", env={"SYNAPTIC_JUDGE_API_KEY": secret},
                  cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        keys = {h.get("Authorization") for h, b in zip(server.headers, server.requests) if b["model"] == "judge"}
    assert keys == {f"Bearer {secret}"}
    assert secret not in out.stdout + out.stderr
    written = [p for p in evals.rglob("*") if p.is_file()]
    assert len(written) == 5 and not [p for p in written if secret in p.read_text()]


@pytest.mark.parametrize("broken, message", [
    ({"question": None}, "question: required, a non-empty string"),
    ({"behavior_expectations": {"asks_for_user_input": "sometimes"}},
     'behavior_expectations.asks_for_user_input: must be true, false or a number, got "sometimes"'),
])
def test_a_wrong_set_is_refused_before_anything_is_written(tmp_path, broken, message):
    cases = json.loads(BEHAVIOUR_SET.read_text())
    cases[3] = {k: v for k, v in {**cases[3], **broken}.items() if v is not None}
    path = tmp_path / "set.json"
    path.write_text(json.dumps(cases))
    out = cli("run", "--model", "m", "--prompt-set", str(path), "--evals-dir", str(tmp_path / "evals"), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"python -m evaluator: {path}: case 4 (id 'CE_search_limit'): {message}"
    assert not (tmp_path / "evals").exists()


def test_unknown_fields_warn_once_and_the_tool_format_hint_is_used(tmp_path):
    cases = json.loads(TOOL_SET.read_text())[:2]
    for case in cases:
        case["difficulty"] = "easy"
    path = tmp_path / "set.json"
    path.write_text(json.dumps(cases))
    mistral = "[TOOL_CALLS] " + json.dumps([{"name": "librarian_searchContent",
                                             "arguments": {"query": "lighting", "context": ctx()}}])
    replies = {cases[0]["question"]: {"content": mistral}}
    with OpenAIServer({"m": scripted(replies)}) as server:
        runs, dirs = {}, {}
        for hint in ("mistral", "hermes"):
            out = cli("run", "--backend", "openai", "--url", server.url, "--model", "m", "--prompt-set", str(path),
                      "--tool-format", hint, "--evals-dir", str(tmp_path / "evals"), "--json", cwd=tmp_path)
            assert out.returncode == 0, out.stderr
            dirs[hint] = Path(json.loads(out.stdout)["eval_dir"])
            runs[hint] = {r["id"]: r for r in read_results(dirs[hint])}
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert warnings == [f"python -m evaluator: warning: {path}: unknown field 'difficulty' ignored in 2 cases "
                        "(first: case 1 (id 'librarian_searchContent'))"]
    assert runs["mistral"]["librarian_searchContent"]["passed"]
    assert runs["mistral"]["librarian_searchContent"]["calls"][0]["source"] == "text"
    # Read as Hermes, the Mistral call is prose: nothing was called.
    assert runs["hermes"]["librarian_searchContent"]["reasons"] == [
        "did not call ['librarian_searchContent'] (called nothing)"]
    assert runs["hermes"]["librarian_searchContent"]["response_type"] == "text_only"
    assert json.loads((dirs["hermes"] / "eval.json").read_text())["settings"]["tool_format"] == "hermes"
