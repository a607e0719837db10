"""The eval runner in the app: a loopback server that follows Ollama's documented API (the real Ollama cannot
run here), a detached eval whose results fill the table live, past evals and a comparison."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import EXAMPLES, write_run
from ollama_server import OllamaServer
from textual.widgets import DataTable, Input, Log, RadioSet, Select, Static

from synaptic_tui.app import SynapticApp
from synaptic_tui.screens.evaluate import EvalCompareScreen, EvalResultsScreen, EvalsScreen, EvaluateScreen
from synaptic_tui.services import Services

# A fixed prompt set for the scoring rules (the shipped one is regenerated with the sample data).
PROMPTS = Path(__file__).parent / "fixtures" / "notes_cases.json"
SHIPPED = EXAMPLES / "prompts" / "tool_calling.json"


async def settle(pilot, predicate, timeout=60.0):
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError("the screen did not catch up")


def prompt_dir(tmp_path: Path, count: int = 3, no_tool: bool = False) -> Path:
    """`count` search cases the scripted server's search_notes call passes, and with `no_tool` a case that
    expects no call at all, which that same answer fails."""
    cases = json.loads(PROMPTS.read_text())
    search = [c for c in cases if c.get("expected_tools") == ["search_notes"]][:count]
    for case in search:  # a call with just a query passes: the scripted server knows no session ids
        case.pop("expected_context", None)
        for tool in case["tools"]:
            tool["function"]["parameters"]["required"] = ["query"]
    if no_tool:
        search.append(next(c for c in cases if c.get("expected_tools") == []))
    (tmp_path / "prompts").mkdir()
    path = tmp_path / "prompts" / "search.json"
    path.write_text(json.dumps(search))
    return path


async def test_run_an_eval_from_the_screen_and_watch_it_fill(tmp_path, runs_dir, monkeypatch):
    prompt_set = prompt_dir(tmp_path, no_tool=True)
    case_ids = [c["id"] for c in json.loads(prompt_set.read_text())]
    search_ids, no_tool_id = case_ids[:3], case_ids[3]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNAPTIC_EVALS_DIR", raising=False)
    reply = {"content": "", "tool_calls": [{"name": "search_notes", "arguments": {"query": "x"}}]}
    with OllamaServer(reply=reply) as server:
        app = SynapticApp(Services(runs_dir=runs_dir, refresh_seconds=0.2))
        async with app.run_test(size=(150, 45)) as pilot:
            await pilot.press("e")
            screen = app.screen
            assert isinstance(screen, EvaluateScreen)
            # Nothing listens on Ollama's default port here: the screen says so and how to start it.
            await settle(pilot, lambda: "not reachable" in str(screen.query_one("#reach", Static).render()))
            assert "ollama serve" in str(screen.query_one("#reach", Static).render())
            await pilot.press("ctrl+r")
            assert not (tmp_path / "evals").exists()  # no model picked: nothing started

            url = screen.query_one("#url", Input)
            url.value = server.url
            url.focus()
            await pilot.press("enter")
            await settle(pilot, lambda: "reachable, 1 model" in str(screen.query_one("#reach", Static).render()))
            screen.query_one("#model", Select).value = "demo-model:latest"
            assert screen.query_one("#prompt-set", Select).value == str(prompt_set)
            await pilot.press("ctrl+r")

            results = screen.query_one("#results", DataTable)
            await settle(pilot, lambda: results.row_count == 4 and "completed" in str(
                screen.query_one("#eval-progress", Static).render()))
            assert sorted(str(k.value) for k in results.rows) == sorted(case_ids)
            assert {str(results.get_cell(i, "called")) for i in case_ids} == {"search_notes"}
            # The same call passes the search cases and fails the one that expects no call.
            assert {i: str(results.get_cell(i, "pass")) for i in case_ids} == {
                **{i: "yes" for i in search_ids}, no_tool_id: "no"}
            assert "passed 3" in str(screen.query_one("#eval-progress", Static).render())
            summary = str(screen.query_one("#eval-summary", Static).render())
            assert "pass rate 75% (3/4, 0 errors)" in summary and "report:" in summary
            assert "no-tool" in summary and "0/1" in summary

            async def show(case_id: str) -> str:
                results.move_cursor(row=results.get_row_index(case_id))
                await pilot.pause()
                return "\n".join(screen.query_one("#case-log", Log).lines)

            log = await show(search_ids[0])
            assert 'call: search_notes {"query": "x"} (native)' in log
            # Every check of a passing case reads ok; the raw body the server sent is shown as sent.
            assert "ok   expected_tools" in log and "FAIL" not in log
            assert "raw:" in log and '"done": true' in log
            log = await show(no_tool_id)
            assert f"case {no_tool_id}:" in log
            assert "FAIL expected_tools: expected no tool call, called ['search_notes']" in log
            [eval_dir] = (tmp_path / "evals").iterdir()
            summary = json.loads((eval_dir / "summary.json").read_text())
            assert (summary["total"], summary["passed"], summary["failed"], summary["errors"]) == (4, 3, 1, 0)
        assert len(server.requests) == 4


async def test_past_evals_open_and_compare(tmp_path, runs_dir, monkeypatch):
    from evaluator.prompts import load_prompt_set
    from evaluator.runner import create_eval, new_settings, run_eval

    prompt_set = load_prompt_set(prompt_dir(tmp_path, count=2))
    monkeypatch.setenv("SYNAPTIC_EVALS_DIR", str(tmp_path / "evals"))
    good = {"content": "", "tool_calls": [{"name": "search_notes", "arguments": {"query": "x"}}]}
    dirs = []
    for reply in ({"content": "I cannot help."}, good):
        with OllamaServer(reply=reply) as server:
            eval_dir = create_eval(new_settings("ollama", "demo-model", prompt_set, url=server.url), tmp_path / "evals")
            await run_eval(eval_dir)
            dirs.append(eval_dir)
    app = SynapticApp(Services(runs_dir=runs_dir, refresh_seconds=0.2))
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("e", "ctrl+o")
        assert isinstance(app.screen, EvalsScreen)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 2
        await pilot.press("enter")
        assert isinstance(app.screen, EvalResultsScreen)
        await settle(pilot, lambda: app.screen.query_one("#results", DataTable).row_count == 2)
        await pilot.press("escape", "space", "space", "v")
        screen = app.screen
        assert isinstance(screen, EvalCompareScreen)
        overall = str(screen.query_one("#compare-overall", Static).render())
        flips = str(screen.query_one("#compare-flips", Static).render())
        # Newest first: A is the good eval, B the one that never calls a tool.
        assert "A " + dirs[1].name in overall and "-100%" in overall
        assert "broken (passed in A, fail in B): " + ", ".join(sorted(c.id for c in prompt_set.cases)) in flips


async def test_evaluate_from_a_checkpoint_files_the_eval_under_its_run(runs_dir):
    from synaptic_tui.screens.run_view import RunScreen

    run_dir = write_run(runs_dir, "20261122-120000-sft-done", status={"state": "succeeded", "step": 10},
                        checkpoints=(10,), final=True, metrics=[{"step": 10, "loss": 1.0}])
    app = SynapticApp(Services(runs_dir=runs_dir, refresh_seconds=0.2))
    async with app.run_test(size=(150, 45)) as pilot:
        app.show_run(run_dir)
        await pilot.pause(0.2)
        assert isinstance(app.screen, RunScreen)
        await pilot.press("enter", "down", "down", "enter")
        screen = app.screen
        assert isinstance(screen, EvaluateScreen) and screen.run_dir == run_dir
        assert "filed under run 20261122-120000-sft-done" in str(screen.query_one("#eval-run", Static).render())
        # A checkpoint is served here by default (no server to start by hand); the others stay one key away.
        assert [b.name for b in screen.query("#backend RadioButton")] == ["serve", "ollama", "openai"]
        assert screen.query_one("#backend", RadioSet).pressed_button.name == "serve"
        assert "served when the eval starts" in str(screen.query_one("#reach", Static).render())


FIXTURES = Path(__file__).parent / "fixtures"


async def test_behaviour_checks_and_both_rates_from_the_screen_with_a_judge(tmp_path, runs_dir, monkeypatch):
    from openai_server import OpenAIServer, judge_by_rubric
    from test_evaluator_behavior_runs import GOOD, REPLIES, model

    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "behaviour.json").write_text((FIXTURES / "original_behavior.json").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNAPTIC_EVALS_DIR", raising=False)
    with OpenAIServer({"m": model(REPLIES), "judge": judge_by_rubric}) as server:
        app = SynapticApp(Services(runs_dir=runs_dir, refresh_seconds=0.2))
        async with app.run_test(size=(150, 50)) as pilot:
            await pilot.press("e")
            screen = app.screen
            screen.query_one("#backend", RadioSet).focus()
            await pilot.press("down", "enter")  # Ollama -> OpenAI-compatible
            url = screen.query_one("#url", Input)
            await settle(pilot, lambda: url.value.endswith("/v1"))
            url.value = server.url
            url.focus()
            await pilot.press("enter")
            await settle(pilot, lambda: "reachable, 2 model" in str(screen.query_one("#reach", Static).render()))
            screen.query_one("#model", Select).value = "m"
            screen.query_one("#judge-model", Input).value = "judge"
            screen.query_one("#judge-url", Input).value = server.url
            await pilot.press("ctrl+r")
            results = screen.query_one("#results", DataTable)
            await settle(pilot, lambda: results.row_count == 6 and "completed" in str(
                screen.query_one("#eval-progress", Static).render()))
            cells = {case: tuple(str(results.get_cell(case, col)) for col in ("tools", "behaviour", "pass"))
                     for case in ("IH_vague_delete", "EP_synthesis", "WA_pick_workspace")}
            assert cells == {"IH_vague_delete": ("", "yes", "yes"), "EP_synthesis": ("no", "no", "no"),
                             "WA_pick_workspace": ("yes", "no", "no")}
            results.move_cursor(row=results.get_row_index("WA_pick_workspace"))
            await pilot.pause()
            log = "\n".join(screen.query_one("#case-log", Log).lines)
            assert "  notes: Two workspaces: say which one and why, then append." in log
            assert "  reply: tool_text (expected tool_text)" in log
            assert "  FAIL explains_choice (judge): read by the 'why' rule" in log
            assert "  ok   appends_content (rule): called content_appendContent" in log
            summary = str(screen.query_one("#eval-summary", Static).render())
            assert "tool calls 75% (3/4)   behaviour 33% (2/6)" in summary
            assert "judge judge: 4 verdicts, agrees with the rules on 1/1" in summary
            [eval_dir] = [p for p in (tmp_path / "evals").iterdir() if p.is_dir()]
            settings = json.loads((eval_dir / "eval.json").read_text())["settings"]
            assert (settings["judge_model"], settings["judge_url"]) == ("judge", server.url)
    with OpenAIServer({"m": model({**REPLIES, **GOOD}), "judge": judge_by_rubric}) as server:
        from evaluator.prompts import load_prompt_set
        from evaluator.runner import create_eval, new_settings, run_eval

        settings = new_settings("openai", "m", load_prompt_set(tmp_path / "prompts" / "behaviour.json"),
                                url=server.url, judge_url=server.url, judge_model="judge")
        tuned = create_eval(settings, tmp_path / "evals")
        await run_eval(tuned)
    app = SynapticApp(Services(runs_dir=runs_dir, refresh_seconds=0.2))
    async with app.run_test(size=(150, 45)) as pilot:
        app.push_screen(EvalCompareScreen(eval_dir, tuned))
        await pilot.pause()
        overall = str(app.screen.query_one("#compare-overall", Static).render())
        flips = str(app.screen.query_one("#compare-flips", Static).render())
    assert "tool calls 75% -> 100% (+25%)   behaviour 33% -> 67% (+33%)" in overall
    assert ("behaviour checks fixed: EP_synthesis creates_shallow_content_directly, EP_synthesis "
            "delegates_complex_task, EP_synthesis uses_execute_prompt, WA_pick_workspace explains_choice") in flips
    assert "behaviour checks broken: none" in flips
