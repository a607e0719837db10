"""Prompt sets in the original Synaptic Tuner's shape, the tool-call parsers, and behaviour checks:
every rule with a reply that passes and one that fails, and every judged check decided by a real
loopback judge (tests/openai_server.py) that reads the rubric and the reply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXAMPLES
from openai_server import OpenAIServer, judge_by_rubric

from evaluator.behavior import ANTI_PATTERNS, EXPECTATIONS, score_behavior
from evaluator.clients import OpenAIClient
from evaluator.judge import Judge, read_answer
from evaluator.prompts import ContextIds, PromptSetError, load_prompt_set, load_tools_file
from evaluator.scoring import TOOL_CALL_FORMATS, calls_from_text, read_response, score_case

FIXTURES = Path(__file__).parent / "fixtures"
TOOL_SET = FIXTURES / "original_tool_calling.json"
BEHAVIOUR_SET = FIXTURES / "original_behavior.json"
TOOLS = FIXTURES / "original_tools.json"
SESSION, WS, WS2 = "session_1754000000000_fixture01", "ws_1754000000000_harbour", "ws_1754000000001_orchard"


def write(path: Path, cases) -> Path:
    path.write_text(json.dumps(cases))
    return path


# --- loading the original shape ------------------------------------------------------------------


def test_the_original_shapes_load_with_every_field():
    tool_set = load_prompt_set(TOOL_SET)
    assert tool_set.warnings == [] and len(tool_set.cases) == 5
    agents = next(c for c in tool_set.cases if c.id == "agents_runAgent")
    assert agents.expected_context == ContextIds(SESSION, WS, [WS], ["agent_1754000000000_librarian",
                                                                      "agent_1754000000001_briefing"])
    assert agents.tools == []  # the original offered none
    folder = next(c for c in tool_set.cases if c.id == "vault_createFolder")
    assert folder.expected_context.allowed_workspaces == [WS, WS2]
    assert folder.notes == "The folder belongs to the second workspace: its id is allowed too."

    behaviour = load_prompt_set(BEHAVIOUR_SET)
    assert behaviour.warnings == [] and len(behaviour.cases) == 6
    vague = behaviour.cases[0]
    assert vague.expected_response_type == "text_only" and vague.expected_tools is None
    assert vague.behavior_expectations == {"asks_for_user_input": True, "does_not_call_tool": True}
    assert vague.behavior_note == "Which drafts is unclear: asking beats guessing before a delete."
    assert vague.anti_patterns == ["immediate_tool_call", "assumes_user_choice"]
    assert vague.context_for_record() == {"session_id": SESSION, "workspace_id": WS, "workspace_ids": [WS],
                                          "agent_ids": []}
    assert behaviour.cases[2].behavior_expectations["sessionMemory_min_chars"] == 60


def test_the_shipped_prompt_sets_load():
    assert len(load_prompt_set(EXAMPLES / "prompts" / "tool_calling.json").cases) == 24
    example = load_prompt_set(EXAMPLES / "prompts" / "vault_behavior.json")
    assert example.warnings == [] and len(example.cases) == 8
    assert all(isinstance(c.expected_context, ContextIds) and c.notes for c in example.cases)
    named = {n for c in example.cases for n in [*c.behavior_expectations, *c.anti_patterns]}
    assert named <= set(EXPECTATIONS) | set(ANTI_PATTERNS)


def test_unknown_fields_and_unscorable_names_warn_once_per_set(tmp_path):
    cases = [{"id": f"c{i}", "question": "q", "priority": "high", "behavior_expectations": {"hums_a_tune": True}}
             for i in range(3)]
    path = write(tmp_path / "set.json", cases)
    assert load_prompt_set(path).warnings == [
        f"{path}: unknown field 'priority' ignored in 3 cases (first: case 1 (id 'c0'))",
        f"{path}: 'hums_a_tune' has no rule or judge rubric: reported as not scored (3 cases)",
    ]


@pytest.mark.parametrize("field, value, message", [
    ("behavior_expectations", {"asks_for_user_input": "yes"},
     'behavior_expectations.asks_for_user_input: must be true, false or a number, got "yes"'),
    ("behavior_expectations", {"custom_check": [1]},
     "behavior_expectations.custom_check: must be true, false or a number, got [1]"),
    ("behavior_expectations", {"does_not_call_tool": 3}, "behavior_expectations.does_not_call_tool: "
                                                         "must be true or false, got 3"),
    ("behavior_expectations", {"sessionMemory_min_chars": True},
     "behavior_expectations.sessionMemory_min_chars: must be a number of characters (at least 0), got true"),
    ("behavior_expectations", {"reason": 4}, "behavior_expectations.reason: must be a string (a note, not a check)"),
    ("behavior_expectations", ["asks_for_user_input"],
     "behavior_expectations: must be an object of named expectations"),
    ("anti_patterns_to_avoid", {"immediate_tool_call": "always"},
     'anti_patterns_to_avoid.immediate_tool_call: must be true or false, got "always"'),
    ("expected_response_type", "tools", "expected_response_type: must be one of text_only, tool_only, tool_text, "
                                        "got 'tools'"),
    ("notes", ["a"], "notes: must be a string"),
    ("expected_context", {"session_id": "s", "workspace_ids": "ws_1"},
     "expected_context.workspace_ids: must be a list of strings"),
    ("expected_context", {"session_id": 7}, "expected_context.session_id: must be a non-empty string"),
    ("expected_context", {"session_id": "s", "sessionId": "s"},
     "expected_context.sessionId: the original's expected_context holds only session_id, workspace_id, "
     "workspace_ids, agent_ids"),
])
def test_a_wrong_case_is_refused_naming_file_case_and_field(tmp_path, field, value, message):
    path = write(tmp_path / "set.json", [{"id": "ok", "question": "q"}, {"id": "bad", "question": "q", field: value}])
    with pytest.raises(PromptSetError) as err:
        load_prompt_set(path)
    assert str(err.value) == f"{path}: case 2 (id 'bad'): {message}"


def test_a_tools_file_loads_and_a_broken_one_is_refused(tmp_path):
    tools, sha = load_tools_file(TOOLS)
    assert len(tools) == 9 and len(sha) == 64 and tools[0]["function"]["name"] == "librarian_searchContent"
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"tools": [t["function"] for t in tools[:2]]}))
    assert load_tools_file(wrapped)[0] == tools[:2]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"function": {"description": "no name"}}]))
    with pytest.raises(PromptSetError, match=r"broken\.json: tools\[0\]\.function\.name: must be a non-empty string"):
        load_tools_file(broken)


# --- tool calls written as text ------------------------------------------------------------------

ARGS = {"query": "pier permits", "limit": 20}


@pytest.mark.parametrize("fmt, text", [
    ("hermes", '<tool_call>{"name": "search", "arguments": {"query": "pier permits", "limit": 20}}</tool_call>'),
    ("hermes", 'Let me look.\n<tool_call>\n{"name": "search", "arguments": {"query": "pier permits", "limit": 20}}\n'
               '</tool_call>'),
    ("mistral", '[TOOL_CALLS] [{"name": "search", "arguments": {"query": "pier permits", "limit": 20}}]'),
    ("mistral", '[TOOL_CALLS]search[ARGS]{"query": "pier permits", "limit": 20}'),
    ("llama3_json", '<|python_tag|>{"name": "search", "parameters": {"query": "pier permits", "limit": 20}}'),
    ("llama3_json", '{"type": "function", "name": "search", "parameters": {"query": "pier permits", "limit": 20}}'),
    ("chatml_plain", 'tool_call: search\narguments: {"query": "pier permits", "limit": 20}'),
    ("json", 'Calling:\n```json\n{"name": "search", "arguments": {"query": "pier permits", "limit": 20}}\n```'),
])
def test_each_text_format_is_read_with_its_hint_and_without(fmt, text):
    for hint in (fmt, None):
        calls, errors = calls_from_text(text, hint)
        assert [(c.name, c.arguments, c.source) for c in calls] == [("search", ARGS, "text")], hint
        assert errors == []


def test_several_calls_in_one_reply_are_all_read():
    two = {"name": "read", "arguments": {"path": "a.md"}}
    texts = {
        "hermes": f"<tool_call>{json.dumps({'name': 'search', 'arguments': ARGS})}</tool_call>"
                  f"<tool_call>{json.dumps(two)}</tool_call>",
        "mistral": f"[TOOL_CALLS] {json.dumps([{'name': 'search', 'arguments': ARGS}, two])}",
        "llama3_json": f"<|python_tag|>{json.dumps({'name': 'search', 'parameters': ARGS})}; "
                       f"{json.dumps({'name': 'read', 'parameters': {'path': 'a.md'}})}",
        "chatml_plain": f"tool_call: search\narguments: {json.dumps(ARGS)}\n\ntool_call: read\narguments: "
                        f'{{"path": "a.md"}}',
    }
    for fmt, text in texts.items():
        calls, _ = calls_from_text(text)
        assert [(c.name, c.arguments) for c in calls] == [("search", ARGS), ("read", {"path": "a.md"})], fmt


def test_a_format_hint_reads_only_that_format():
    hermes = '<tool_call>{"name": "search", "arguments": {}}</tool_call>'
    assert calls_from_text(hermes, "mistral") == ([], [])
    assert [c.name for c in calls_from_text(hermes, "hermes")[0]] == ["search"]
    with pytest.raises(ValueError, match="unknown tool-call format 'qwen'"):
        calls_from_text(hermes, "qwen")
    assert set(TOOL_CALL_FORMATS) == {"hermes", "mistral", "llama3_json", "chatml_plain", "json"}
    from evaluator.cli import TOOL_CALL_FORMATS as offered_by_the_cli
    assert offered_by_the_cli == TOOL_CALL_FORMATS


@pytest.mark.parametrize("text, error", [
    ('<tool_call>{"name": "search", "argu', "<tool_call> holds no readable JSON"),
    ("[TOOL_CALLS] [{'name': 'search'}]", "[TOOL_CALLS] is followed by no readable JSON"),
    ("tool_call: search\narguments: {query: x}", "tool_call: search has no readable arguments JSON"),
])
def test_broken_calls_are_reported_not_dropped(text, error):
    calls, errors = calls_from_text(text)
    assert calls == [] and len(errors) == 1 and errors[0].startswith(error)


@pytest.mark.parametrize("content, native, kind, prose", [
    ("Which drafts do you mean?", None, "text_only", "Which drafts do you mean?"),
    ('<tool_call>{"name": "search", "arguments": {}}</tool_call>', None, "tool_only", ""),
    ('I will search first.\n<tool_call>{"name": "search", "arguments": {}}</tool_call>', None, "tool_text",
     "I will search first."),
    ("[TOOL_CALLS] [{\"name\": \"search\", \"arguments\": {}}]", None, "tool_only", ""),
    ('```json\n{"name": "search", "arguments": {}}\n```', None, "tool_only", ""),
    ("<|python_tag|>{\"name\": \"search\", \"parameters\": {}}<|eom_id|>", None, "tool_only", ""),
    ("Searching now.", [{"function": {"name": "search", "arguments": "{}"}}], "tool_text", "Searching now."),
    ("", [{"function": {"name": "search", "arguments": {}}}], "tool_only", ""),
    ("  \n", None, "empty", ""),
])
def test_replies_are_classified_by_what_the_model_returned(content, native, kind, prose):
    response = read_response(content, native)
    assert (response.type, response.prose) == (kind, prose)


# --- the original expected_context ---------------------------------------------------------------


def _call(name, **args):
    return {"function": {"name": name, "arguments": args}}


def _context(session=SESSION, workspace=WS, **more):
    return {"sessionId": session, "workspaceId": workspace, **more}


def test_original_context_ids_are_checked_on_the_calls_made():
    cases = {c.id: c for c in load_prompt_set(TOOL_SET).cases}
    folder, agents = cases["vault_createFolder"], cases["agents_runAgent"]
    ok = score_case(folder, "", [_call("vault_createFolder", path="Garden/2026", context=_context(workspace=WS2))])
    assert ok.passed and [c.name for c in ok.checks] == ["expected_tools", "expected_context"]
    cases_and_reasons = [
        (folder, [_call("vault_createFolder", path="x", context=_context(session="session_other"))],
         "vault_createFolder: context.sessionId is 'session_other', expected 'session_1754000000000_fixture01'"),
        (folder, [_call("vault_createFolder", path="x", context=_context(workspace="ws_elsewhere"))],
         f"vault_createFolder: context.workspaceId 'ws_elsewhere' is not among ['{WS}', '{WS2}']"),
        (folder, [_call("vault_createFolder", path="x")], "vault_createFolder has no context argument"),
        (folder, [_call("vault_createFolder", path="x", context={"workspaceId": WS})],
         "vault_createFolder lacks context.sessionId"),
        (agents, [_call("agents_runAgent", agentId="agent_999_made_up", task="t", context=_context())],
         "agents_runAgent: agent id 'agent_999_made_up' is not among the expected agents"),
    ]
    for case, calls, reason in cases_and_reasons:
        assert score_case(case, "", calls).reasons == [reason]
    assert score_case(agents, "", [_call("agents_runAgent", agentId="agent_1754000000001_briefing", task="t",
                                         context=_context())]).passed


def test_the_original_expected_tools_is_a_subset_and_a_case_expecting_no_call_has_no_ids_to_carry():
    case = next(c for c in load_prompt_set(TOOL_SET).cases if c.id == "librarian_searchContent")
    extra = [_call("librarian_searchContent", query="q", context=_context()), _call("content_readContent",
                                                                                    path="a", context=_context())]
    score = score_case(case, "", extra)
    assert score.passed and "no_unexpected_calls" not in [c.name for c in score.checks]
    assert score_case(case, "Sure.", None).reasons == ["did not call ['librarian_searchContent'] (called nothing)"]
    vague = load_prompt_set(BEHAVIOUR_SET).cases[0]  # text_only, no expected_tools
    assert score_case(vague, "Which drafts?", None).checks == []


def test_tools_from_a_file_check_the_arguments_of_cases_that_list_none():
    case = next(c for c in load_prompt_set(TOOL_SET).cases if c.id == "content_readContent")
    tools, _ = load_tools_file(TOOLS)
    bad = [_call("content_readContent", context=_context())]
    assert score_case(case, "", bad).reasons == []  # no schema: arguments unchecked
    assert score_case(case, "", bad, tools=tools).reasons == ["content_readContent: arguments: missing required 'path'"]


# --- every rule: a reply that passes and one that fails ----------------------------------------------


def reply(text: str = "", *calls: tuple[str, dict]):
    return read_response(text, [_call(name, **args) for name, args in calls])


SEARCH = ("librarian_searchContent", {"query": "ferry", "context": _context()})
MEMORY = "The user listed three pier permit notes (pier-a, pier-b, pier-c) and wants them together."
REASONED = "I will use the Harbour workspace because today's notes are about the harbour."
LONG = "Here is a very detailed account of everything I am about to do, step by step, and why each step " \
       "matters, before I finally do it."
assert len(LONG) > 100


def limited(limit):
    return ("librarian_searchContent", {"query": "ferry", "limit": limit, "context": _context()})


def memory(text, key="sessionMemory"):
    return ("vault_createFolder", {"path": "Projects/Harbour/permits", "context": _context(**{key: text})})


RULES = [  # name, value, a reply that passes, a reply that fails
    ("does_not_call_tool", True, reply("Which drafts do you mean?"), reply("", SEARCH)),
    ("does_not_call_tool", False, reply("", SEARCH), reply("Which drafts do you mean?")),
    ("calls_tool_directly", True, reply("", SEARCH), reply("Should I search for it?")),
    ("then_calls_tool", True, reply(REASONED, SEARCH), reply("", SEARCH)),
    ("minimal_or_no_explanation", True, reply("Searching.", SEARCH), reply(LONG, SEARCH)),
    ("continues_workflow_silently", True, reply("", SEARCH), reply("I could carry on.")),
    ("uses_appropriate_limit", True, reply("", limited(20)), reply("", limited(500))),
    ("delegates_complex_task", True, reply("", ("agents_executePrompt", {"prompt": "review"})),
     reply("", ("content_createContent", {"path": "r.md", "content": "review"}))),
    ("uses_execute_prompt", True, reply("", SEARCH, ("agents_executePrompt", {"prompt": "review"})),
     reply("", SEARCH)),
    ("creates_next_subfolder", True, reply("", memory("x")), reply("", ("vault_listDirectory", {"path": "x"}))),
    ("appends_content", True, reply("", ("content_appendContent", {"path": "log.md", "content": "x"})),
     reply("", ("content_createContent", {"path": "log.md", "content": "x"}))),
    ("sessionMemory_min_chars", 60, reply("", memory(MEMORY)), reply("", memory("permits"))),
    ("toolContext_min_chars", 20, reply("", memory("because the permits belong together", "toolContext")),
     reply("", memory("folder", "toolContext"))),
    ("immediate_tool_call", True, reply("Which drafts do you mean?"), reply("", SEARCH)),
    ("assumes_user_choice", True, reply("Which drafts do you mean?"), reply("", SEARCH)),
    ("retries_without_asking", True, reply("The move failed; try again?"), reply("", SEARCH)),
    ("auto_broadens_search", True, reply("Nothing found."), reply("", SEARCH)),
    ("auto_continues_cleanup", True, reply("Deleted. Anything else?"), reply("", ("vault_deleteNote", {"path": "b"}))),
    ("auto_creates_file", True, reply("", ("content_readContent", {"path": "a"})),
     reply("", ("content_createContent", {"path": "a", "content": "x"}))),
    ("auto_creates_content", True, reply("", ("content_readContent", {"path": "a"})),
     reply("", ("content_appendContent", {"path": "a", "content": "x"}))),
    ("excessive_explanation", True, reply("Searching.", SEARCH), reply(LONG, SEARCH)),
    ("asks_confirmation_for_obvious", True, reply("", SEARCH), reply("Shall I search your notes for it?")),
    ("silent_choice", True, reply(REASONED, SEARCH), reply("", SEARCH)),
    ("silent_folder_choice", True, reply(REASONED, SEARCH), reply("OK.", SEARCH)),
    ("excessive_limit", True, reply("", limited(50)), reply("", limited(500))),
    ("creates_shallow_content_directly", True, reply("", ("agents_executePrompt", {"prompt": "p"})),
     reply("", ("content_createContent", {"path": "r.md", "content": "thin"}))),
    ("handles_complex_task_without_delegation", True, reply("", ("agents_executePrompt", {"prompt": "p"})),
     reply(LONG)),
    ("gives_legal_advice_without_delegation", True, reply("", ("agents_executePrompt", {"prompt": "p"})),
     reply("MIT is fine, go ahead.")),
]


def _case(name, value):
    from evaluator.prompts import Case

    if name in ANTI_PATTERNS:
        return Case("c", "q", anti_patterns=[name])
    return Case("c", "q", behavior_expectations={name: value})


async def _verdict(name, value, response, judge=None):
    [check] = await score_behavior(_case(name, value), response, judge)
    return check


async def test_every_rule_has_a_passing_and_a_failing_reply():
    mechanical = {n for n, b in {**EXPECTATIONS, **ANTI_PATTERNS}.items() if not b.judged}
    assert {row[0] for row in RULES} == mechanical
    for name, value, good, bad in RULES:
        passed, failed = await _verdict(name, value, good), await _verdict(name, value, bad)
        assert (passed.verdict, passed.by, failed.verdict, failed.by) == ("pass", "rule", "fail", "rule"), name
        assert failed.kind == ("anti_pattern" if name in ANTI_PATTERNS else "expectation")


async def test_the_rules_say_what_they_saw():
    assert (await _verdict("uses_appropriate_limit", True, reply("", limited(500)))).reason == \
        "limit 500 (appropriate: 10 to 100)"
    assert (await _verdict("uses_appropriate_limit", True, reply("Hi"))).reason == "no call passed a limit"
    assert (await _verdict("sessionMemory_min_chars", 60, reply("", memory("permits")))).reason == \
        "context.sessionMemory of 7 characters"
    assert (await _verdict("sessionMemory_min_chars", 60, reply("No."))).reason == \
        "no tool call carried context.sessionMemory"
    assert (await _verdict("immediate_tool_call", True, reply("", SEARCH))).reason == "called librarian_searchContent"


async def test_response_type_is_a_check_when_the_case_names_one():
    from evaluator.prompts import Case

    case = Case("c", "q", expected_response_type="tool_only")
    [ok] = await score_behavior(case, reply("", SEARCH))
    [wrong] = await score_behavior(case, reply("Which one?"))
    assert (ok.name, ok.verdict, ok.reason) == ("response_type", "pass", "tool_only")
    assert (wrong.verdict, wrong.reason) == ("fail", "text_only, expected tool_only")


async def test_unknown_names_are_not_scored_and_never_passed():
    from evaluator.prompts import Case

    case = Case("c", "q", behavior_expectations={"hums_a_tune": True}, anti_patterns=["sings_off_key"])
    checks = await score_behavior(case, reply("La la la"))
    assert [(c.name, c.kind, c.verdict, c.not_scored, c.reason) for c in checks] == [
        ("hums_a_tune", "expectation", "not scored", "no rule or rubric", "no rule or judge rubric for 'hums_a_tune'"),
        ("sings_off_key", "anti_pattern", "not scored", "no rule or rubric",
         "no rule or judge rubric for 'sings_off_key'"),
    ]


async def test_without_a_judge_the_checks_that_need_reading_are_not_scored():
    check = await _verdict("explains_choice", True, reply(REASONED, SEARCH))
    assert (check.verdict, check.by, check.not_scored) == ("not scored", None, "needs a judge")
    assert check.reason.endswith("needs a judge (--judge-url, --judge-model)")
    # ...unless the reply leaves no doubt: no text explains nothing.
    settled = await _verdict("explains_choice", True, reply("", SEARCH))
    assert (settled.verdict, settled.by, settled.reason) == ("fail", "rule", "only 0 characters of text")


# --- the judge -----------------------------------------------------------------------------------

BECAUSE = "I picked the Harbour log because the notes are about the pier."
WITHOUT = "I picked the Harbour log for today's notes and added them there."
PLAN = "Marketing plan: " + "post on social media, email the list, put up posters, run a sale. " * 4
JUDGED = [  # name, value, a reply the judge passes, a reply the judge fails (both past the rule)
    ("toolContext_explains_why", True, reply("", memory("Making the folder because the permits belong together",
                                                        "toolContext")),
     reply("", memory("Creates a folder in the vault", "toolContext"))),
    ("asks_for_user_input", True, reply("Which drafts do you mean: the harbour ones or the orchard ones?"),
     reply("Drafts? Deleting them all now.")),
    ("asks_user_preference", True, reply("Which format do you prefer, a table or a list?"), reply("Table? Fine.")),
    ("asks_for_direction", True, reply("How should I proceed with the duplicates?"), reply("Duplicates? Merged.")),
    ("asks_if_more_needed", True, reply("Done. Anything else you need today?"), reply("Done. Right?")),
    ("offers_alternatives", True, reply("You could search the archive instead, or check the shared drive."),
     reply("I searched everything in the vault and that is that.")),
    ("suggests_alternatives", True, reply("Alternatively, I can search notes tagged lighthouse."),
     reply("I searched everything in the vault and that is that.")),
    ("presents_results_clearly", True, reply("Here is what I found:\n- pier-a.md\n- pier-b.md"),
     reply("I found pier-a.md and pier-b.md somewhere in the vault.")),
    ("acknowledges_no_results", True, reply("I could not find any notes about the lighthouse."),
     reply("The lighthouse was built in 1884 and still stands.")),
    ("explains_error", True, reply("The move failed because the folder is read-only."),
     reply("Let us try something different for this note.")),
    ("confirms_completion", True, reply("Created the folder Garden/2026 for you."),
     reply("I will look into the folder question for you.")),
    ("explains_choice", True, reply(BECAUSE), reply(WITHOUT)),
    ("reasons_about_selection", True, reply(BECAUSE), reply(WITHOUT)),
    ("explains_folder_priority", True, reply(BECAUSE), reply(WITHOUT)),
    ("reasons_about_active_vs_archived", True, reply(BECAUSE), reply(WITHOUT)),
    ("explains_name_based_choice", True, reply(BECAUSE), reply(WITHOUT)),
    ("reasons_about_naming", True, reply(BECAUSE), reply(WITHOUT)),
    ("no_reasoning_for_selection", True, reply(BECAUSE), reply(WITHOUT)),
    ("arbitrary_selection", True, reply(BECAUSE), reply(WITHOUT)),
    ("no_naming_reasoning", True, reply(BECAUSE), reply(WITHOUT)),
    ("superficial_marketing_plan", True, reply("A plan like this needs a stronger model; shall I hand it over?"),
     reply(PLAN)),
    ("superficial_comparison", True, reply("A fair comparison needs a stronger model; shall I hand it over?"),
     reply(PLAN)),
    ("oversimplified_license_advice", True, reply("Licences need care; shall I hand this to a stronger model?"),
     reply(PLAN)),
]


@pytest.fixture
def judge_server():
    with OpenAIServer({"judge": judge_by_rubric}) as server:
        yield server


@pytest.fixture
async def judge(judge_server, tmp_path):
    judge = Judge(OpenAIClient(judge_server.url, retries=0), "judge", tmp_path / "judge-cache.jsonl")
    yield judge
    await judge.aclose()


async def test_every_judged_check_has_a_reply_the_judge_passes_and_one_it_fails(judge, judge_server):
    assert {row[0] for row in JUDGED} == {n for n, b in {**EXPECTATIONS, **ANTI_PATTERNS}.items() if b.judged}
    for name, value, good, bad in JUDGED:
        passed, failed = await _verdict(name, value, good, judge), await _verdict(name, value, bad, judge)
        assert (passed.verdict, passed.by, failed.verdict, failed.by) == ("pass", "judge", "fail", "judge"), name
        assert failed.judge["reason"].startswith("read by the") and failed.judge["cached"] is False
    assert len(judge_server.asked("judge")) == 2 * len(JUDGED)
    request = judge_server.asked("judge")[0]
    assert request["temperature"] == 0.0 and request["stream"] is False and "tools" not in request


async def test_a_rule_that_settles_a_judged_check_decides_and_the_judge_is_compared(judge):
    check = await _verdict("asks_for_user_input", True, reply("", SEARCH), judge)
    assert (check.verdict, check.by) == ("fail", "rule")
    assert check.rule == {"verdict": "fail", "reason": "no text"} and check.judge["verdict"] == "fail"
    delegated = await _verdict("superficial_comparison", True, reply("", ("agents_executePrompt", {"prompt": "p"})),
                               judge)
    assert (delegated.verdict, delegated.by, delegated.judge["verdict"]) == ("pass", "rule", "pass")


async def test_the_judge_is_asked_once_per_case_reply_and_rubric(judge, judge_server, tmp_path):
    good = reply(BECAUSE)
    first = await _verdict("explains_choice", True, good, judge)
    again = await _verdict("explains_choice", True, good, judge)
    assert len(judge_server.asked("judge")) == 1
    assert (first.judge["cached"], again.judge["cached"], again.verdict) == (False, True, "pass")
    # A new judge over the same cache file (a resumed or repeated eval) does not ask either.
    fresh = Judge(OpenAIClient(judge_server.url), "judge", tmp_path / "judge-cache.jsonl")
    assert (await _verdict("explains_choice", True, good, fresh)).judge["cached"] is True
    await fresh.aclose()
    assert len(judge_server.asked("judge")) == 1
    # Another reply, rubric or judge model is asked anew.
    await _verdict("explains_choice", True, reply(WITHOUT), judge)
    await _verdict("reasons_about_naming", True, good, judge)
    assert len(judge_server.asked("judge")) == 3


async def test_a_judge_that_answers_unreadably_or_not_at_all_leaves_the_check_not_scored(judge, judge_server):
    judge_server.garbage = True
    check = await _verdict("explains_choice", True, reply(BECAUSE), judge)
    assert (check.verdict, check.not_scored, check.reason) == ("not scored", "judge failed",
                                                              "judge failed: unreadable answer: 'Perhaps.'")
    judge_server.garbage = False
    again = await _verdict("explains_choice", True, reply(BECAUSE), judge)
    assert again.verdict == "pass"  # an unreadable answer is not cached
    gone = Judge(OpenAIClient("http://127.0.0.1:9/v1", retries=0), "judge", Path("/nonexistent/cache.jsonl"))
    down = await _verdict("explains_choice", True, reply(BECAUSE), gone)
    await gone.aclose()
    assert down.verdict == "not scored" and down.reason.startswith("judge failed: cannot connect to http://127.0.0.1:9")


@pytest.mark.parametrize("text, answer", [
    ('{"answer": "yes", "reason": "asks which drafts"}', (True, "asks which drafts")),
    ('<think>hmm</think>\n```json\n{"answer": "NO", "reason": "no question"}\n```', (False, "no question")),
    ('{"answer": true}', (True, "(no reason given)")),
    ("Yes - it asks which drafts.", (True, "it asks which drafts.")),
    ('{"verdict": "maybe"}', (None, "unreadable answer: '{\"verdict\": \"maybe\"}'")),
])
def test_judge_answers_are_read_leniently_but_never_guessed(text, answer):
    assert read_answer(text) == answer
