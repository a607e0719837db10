"""The Chat screen: side by side with the base model, tool calls as blocks with a schema check, streamed replies
with tokens/s, history per model in the run's directory. Real servers: transformers serve with the trained demo
run and its base, and a loopback OpenAI-compatible server answering by a script where the words must be known.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import EXAMPLES, copy_run, write_eval
from openai_server import OpenAIServer, scripted
from textual.widgets import Input, Static

from synaptic_tui.app import SynapticApp
from synaptic_tui.chat import ChatSide, append, load_last, new_conversation, read_reply, tokens_per_second
from synaptic_tui.screens.chat import ChatCase, ChatScreen
from synaptic_tui.services import Services
from synaptic_tui.widgets.chat_view import ChatColumn, ChatMessage, ToolCallBlock

SEARCH = {"type": "function", "function": {"name": "search_notes", "description": "Search the notes.", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["query"]}}}
HERMES_REPLY = ('Let me look that up.\n<tool_call>\n{"name": "search_notes", "arguments": {"query": "sourdough", '
                '"limit": "five"}}\n</tool_call>')


async def settle(pilot, predicate, timeout: float = 600.0):
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError("the screen did not catch up")


def texts(column: ChatColumn, kind=ChatMessage) -> list[str]:
    return [str(w.render()) for w in column.query(kind)]


# --- reading replies, history -------------------------------------------------------------------------------


def test_a_reply_is_read_as_the_evaluator_reads_it_and_each_call_checked():
    reply = read_reply(HERMES_REPLY, None, [SEARCH], "hermes")
    assert reply.prose == "Let me look that up."
    [call] = reply.calls
    assert (call.name, call.arguments, call.source) == ("search_notes", {"query": "sourdough", "limit": "five"}, "text")
    assert (call.ok, call.check) == (False, "limit: expected integer, got string")
    native = read_reply("", [{"function": {"name": "read_note", "arguments": '{"path": "a.md"}'}}], [SEARCH], None)
    assert (native.calls[0].source, native.calls[0].ok) == ("native", False)
    assert native.calls[0].check == "read_note is not one of the offered tools (search_notes)"
    unchecked = read_reply(HERMES_REPLY, None, None, "hermes").calls[0]
    assert (unchecked.ok, unchecked.check) == (None, "no tools offered: arguments not checked")


def test_tokens_per_second_counts_generation_after_the_first_token():
    assert tokens_per_second(11, 3.0, 1.0) == 5.0
    assert tokens_per_second(4, 2.0, None) == 2.0
    assert tokens_per_second(None, 2.0, 1.0) is None


def test_history_keeps_the_last_conversation_and_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "chats" / "m.jsonl"
    new_conversation(path, "old system")
    append(path, {"role": "user", "content": "first chat"})
    conversation = new_conversation(path, "Be brief.", [SEARCH], case="case-001")
    for record in ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                   {"role": "user", "content": "again"}, {"role": "error", "content": "cannot connect"}):
        append(path, record)
    with open(path, "a") as handle:
        handle.write('{"role": "assistant", "content": "cut sh')  # the crash happened mid-line
    loaded = load_last(path)
    assert (loaded.conversation_id, loaded.system, loaded.tools, loaded.case) == (
        conversation.conversation_id, "Be brief.", [SEARCH], "case-001")
    assert [m["role"] for m in loaded.messages] == ["user", "assistant", "user", "error"]
    # What a server is sent: the system prompt and the turns, never the error.
    assert loaded.for_request() == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]


# --- the screen against a scripted server -------------------------------------------------------------------


def chat_app(runs_dir: Path) -> SynapticApp:
    return SynapticApp(Services(runs_dir=runs_dir, refresh_seconds=0.2))


def scripted_sides(server: OpenAIServer, runs_dir: Path) -> tuple[ChatSide, ChatSide]:
    tuned = ChatSide("tuned", url=server.url, model="tuned", tool_format="hermes",
                     history=runs_dir / "run" / "chats" / "tuned.jsonl")
    base = ChatSide("base", url=server.url, model="base", history=runs_dir / "run" / "chats" / "base.jsonl")
    return tuned, base


async def test_the_same_message_goes_to_both_models_and_a_tool_call_is_a_block(runs_dir):
    models = {"tuned": scripted({"Find my sourdough notes": {"content": HERMES_REPLY}}),
              "base": scripted({}, default={"content": "I can't search your notes, sorry."})}
    with OpenAIServer(models) as server:
        tuned, base = scripted_sides(server, runs_dir)
        case = ChatCase("case-001", "Find my sourdough notes", "You manage notes.", [SEARCH])
        app = chat_app(runs_dir)
        async with app.run_test(size=(140, 40)) as pilot:
            await app.push_screen(ChatScreen(tuned, base=base, case=case))
            screen = app.screen
            assert screen.query_one("#chat-input", Input).value == "Find my sourdough notes"
            await pilot.press("enter")
            left, right = screen.query(ChatColumn)
            await settle(pilot, lambda: left.query(ToolCallBlock) and "tokens/s" in str(
                right.query_one("#column-stats", Static).render()))
            [block] = left.query(ToolCallBlock)
            assert block.border_title == "tool call: search_notes (from the text)"
            assert block.border_subtitle == "✗ limit: expected integer, got string"
            assert json.loads(str(block.render())) == {"query": "sourdough", "limit": "five"}
            assert texts(left)[-2:] == ["Find my sourdough notes", "Let me look that up."]
            assert texts(right)[-1] == "I can't search your notes, sorry."
            assert "tokens/s" in str(left.query_one("#column-stats", Static).render())
    # Both were asked the same thing, with the case's system prompt and tools.
    for model in ("tuned", "base"):
        [body] = server.asked(model)
        assert body["messages"] == [{"role": "system", "content": "You manage notes."},
                                    {"role": "user", "content": "Find my sourdough notes"}]
        assert body["tools"] == [SEARCH] and body["stream"] is True
    history = load_last(tuned.history)
    assert history.case == "case-001" and [m["role"] for m in history.messages] == ["user", "assistant"]
    assert history.messages[1]["content"] == HERMES_REPLY and history.messages[1]["completion_tokens"] > 0
    assert load_last(base.history).messages[1]["content"] == "I can't search your notes, sorry."


async def test_system_prompt_a_cases_tools_and_clearing_them_change_what_is_sent(runs_dir, monkeypatch):
    from synaptic_tui.screens.chat import CasePicker

    monkeypatch.chdir(runs_dir)  # no ./prompts here: the picker lists the shipped example sets
    with OpenAIServer({"tuned": scripted({}, default={"content": "ok"})}) as server:
        tuned, _ = scripted_sides(server, runs_dir)
        app = chat_app(runs_dir)
        async with app.run_test(size=(140, 40)) as pilot:
            await app.push_screen(ChatScreen(tuned))
            screen = app.screen
            [column] = screen.query(ChatColumn)
            chat_input = screen.query_one("#chat-input", Input)

            async def send(text: str) -> dict:
                before = len(server.asked("tuned"))
                chat_input.value = text
                chat_input.focus()
                await pilot.press("enter")
                await settle(pilot, lambda: len(server.asked("tuned")) == before + 1 and not screen.workers)
                return server.asked("tuned")[-1]

            await pilot.press("ctrl+o")
            system = screen.query_one("#chat-system", Input)
            assert system.has_focus
            system.value = "Answer in one word."
            await pilot.press("enter")
            assert not system.display and chat_input.has_focus
            body = await send("hi")
            assert body["messages"] == [{"role": "system", "content": "Answer in one word."},
                                        {"role": "user", "content": "hi"}] and "tools" not in body

            await pilot.press("ctrl+l")
            picker = app.screen
            assert isinstance(picker, CasePicker)
            first = next(iter(picker.cases.values()))
            await pilot.press("enter")
            assert app.screen is screen and chat_input.value == first.question
            body = await send(first.question)
            # A case brings its own system prompt and tools, and starts a new chat.
            assert body["messages"] == ([{"role": "system", "content": first.system}] if first.system else []) + [
                {"role": "user", "content": first.question}]
            assert [t["function"]["name"] for t in body["tools"]] == [t["function"]["name"] for t in first.tools]
            await pilot.press("ctrl+t")
            body = await send("and now?")
            assert "tools" not in body and body["messages"][-1] == {"role": "user", "content": "and now?"}
            assert len(body["messages"]) == 1 + bool(first.system)  # clearing the tools started a new chat
            await pilot.press("ctrl+n")
            assert texts(column, ".-note") == ["(new chat)"]
            await pilot.press("ctrl+g")  # no base model to show beside a server given as it is
            assert len(screen.query(ChatColumn)) == 1


async def test_a_server_that_dies_mid_chat_fails_that_request_and_loses_nothing(runs_dir):
    models = {"tuned": scripted({}, default={"content": "Hello there."}), "base": scripted({})}
    server = OpenAIServer(models).__enter__()
    tuned, base = scripted_sides(server, runs_dir)
    app = chat_app(runs_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        await app.push_screen(ChatScreen(tuned))
        screen = app.screen
        chat_input = screen.query_one("#chat-input", Input)
        chat_input.value = "hi"
        await pilot.press("enter")
        [column] = screen.query(ChatColumn)
        await settle(pilot, lambda: "Hello there." in texts(column))
        server.__exit__(None, None, None)  # the server goes away
        chat_input.value = "still there?"
        await pilot.press("enter")
        await settle(pilot, lambda: column.query(".-error"))
        [error] = texts(column, ".-error")
        assert error.startswith(f"error: cannot connect to {server.url}/chat/completions")
    # The message the dead server never answered is kept, with why it was not.
    messages = load_last(tuned.history).messages
    assert [(m["role"], m["content"][:12]) for m in messages] == [
        ("user", "hi"), ("assistant", "Hello there."), ("user", "still there?"), ("error", "cannot conne")]


async def test_an_eval_case_is_sent_from_the_results_screen(runs_dir, tmp_path):
    from synaptic_tui.screens.evaluate import EvalResultsScreen

    case = json.loads((EXAMPLES / "prompts" / "tool_calling.json").read_text())[0]
    prompt_set = tmp_path / "one.json"
    prompt_set.write_text(json.dumps([case]))
    with OpenAIServer({"m": scripted({}, default={"content": "On it."})}) as server:
        eval_dir = write_eval(tmp_path / "evals", "20261120-100000-m", {case["id"]: False})
        meta = json.loads((eval_dir / "eval.json").read_text())
        meta["settings"].update(url=server.url, model="m", prompt_set=str(prompt_set))
        (eval_dir / "eval.json").write_text(json.dumps(meta))
        app = chat_app(runs_dir)
        async with app.run_test(size=(140, 40)) as pilot:
            await app.push_screen(EvalResultsScreen(eval_dir))
            await pilot.pause(0.5)
            await pilot.press("c")
            assert isinstance(app.screen, ChatScreen)
            [column] = app.screen.query(ChatColumn)
            await settle(pilot, lambda: "On it." in texts(column))
        [body] = server.asked("m")
    system = [{"role": "system", "content": case["system"]}] if case.get("system") else []
    assert body["messages"] == system + [{"role": "user", "content": case["question"]}]
    assert [t["function"]["name"] for t in body["tools"]] == [t["function"]["name"] for t in case["tools"]]
    assert load_last(runs_dir / ".chats" / "m.jsonl").case == case["id"]


async def test_c_from_home_asks_what_to_chat_with(runs_dir, demo_model):
    app = chat_app(runs_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        target = screen.query_one("#chat-target", Input)
        assert target.has_focus
        target.value = "no-such-model"
        await pilot.press("enter")
        assert not screen.query(ChatColumn)  # said why, started nothing


# --- real servers: transformers serve with a trained run and its base -----------------------------------------


@pytest.mark.slow
async def test_chat_with_a_checkpoint_beside_its_base_model_from_the_run_view(trained_sft_run, runs_dir):
    from synaptic_tui.screens.run_view import RunScreen
    from synaptic_tui.servers.launch import list_servers, stop_server
    from synaptic_tui.widgets.checkpoint_table import CheckpointTable

    run_dir = copy_run(trained_sft_run, runs_dir)
    app = chat_app(runs_dir)
    try:
        async with app.run_test(size=(160, 45)) as pilot:
            await app.push_screen(RunScreen(run_dir))
            table = app.screen.query_one(CheckpointTable)
            await settle(pilot, lambda: table.row_count == 3)
            table.move_cursor(row=0)  # checkpoint-2
            await pilot.press("t")
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            left, right = screen.query(ChatColumn)
            assert (left.border_title, right.border_title) == (f"{run_dir.name}:checkpoint-2", f"{run_dir.name}:base")
            await settle(pilot, lambda: all(s.ready for s in screen.sides))
            assert [s.model for s in screen.sides] == ["sft-demo-model-checkpoint-2", "demo-model"]
            assert [s.engine for s in screen.sides] == ["transformers", "transformers"]
            assert "tool calls parsed by the server (transformers)" in str(
                left.query_one("#column-state", Static).render())
            chat_input = screen.query_one("#chat-input", Input)
            chat_input.value = "Hello"
            await pilot.press("enter")
            await settle(pilot, lambda: all("tokens/s" in str(c.query_one("#column-stats", Static).render())
                                            for c in (left, right)))
            # The checkpoint's server dies; the next message fails there, is answered beside it, and is kept.
            [checkpoint_server] = [s for s in list_servers(runs_dir, live_only=True)
                                   if s.model_id == "sft-demo-model-checkpoint-2"]
            os.killpg(json.loads((checkpoint_server.path / "launch.json").read_text())["pgid"], signal.SIGKILL)
            chat_input.value = "Are you there?"
            await pilot.press("enter")
            await settle(pilot, lambda: left.query(".-error") and len(load_last(
                run_dir / "chats" / "demo-model.jsonl").messages) == 4)
            assert "cannot connect" in texts(left, ".-error")[0]
        tuned = load_last(run_dir / "chats" / "sft-demo-model-checkpoint-2.jsonl").messages
        assert [m["role"] for m in tuned] == ["user", "assistant", "user", "error"]
        assert tuned[1]["engine"] == "transformers" and tuned[1]["completion_tokens"] > 0
        base = load_last(run_dir / "chats" / "demo-model.jsonl").messages
        assert [m["role"] for m in base] == ["user", "assistant", "user", "assistant"]
    finally:
        for server in list_servers(runs_dir, live_only=True):
            stop_server(server, grace=10)


# --- snapshot ---------------------------------------------------------------------------------------------------


def test_chat_screen_side_by_side_with_a_tool_call(snap_compare, runs_dir, monkeypatch):
    """A restored conversation: the checkpoint's tool call as a block with its schema check, the base model beside."""
    monkeypatch.chdir(runs_dir.parent)
    chats = runs_dir / "20261120-091500-sft-demo-model" / "chats"
    tuned = ChatSide("20261120-091500-sft-demo-model:checkpoint-40", url="http://127.0.0.1:9/v1",
                     model="sft-demo-model-checkpoint-40", tool_format="hermes", history=chats / "tuned.jsonl")
    base = ChatSide("20261120-091500-sft-demo-model:base", url="http://127.0.0.1:9/v1", model="demo-model",
                    history=chats / "demo-model.jsonl")
    for side, reply, stats in ((tuned, HERMES_REPLY, (42.5, 31, 0.21, 0.94)),
                               (base, "I can't search your notes, sorry.", (45.0, 9, 0.18, 0.36))):
        new_conversation(side.history, "You manage notes.", [SEARCH], case="case-001")
        append(side.history, {"role": "user", "content": "Find my sourdough notes"})
        append(side.history, {"role": "assistant", "content": reply, "tokens_per_s": stats[0],
                              "completion_tokens": stats[1], "first_token_s": stats[2], "latency_s": stats[3]})
    app = SynapticApp(Services(runs_dir=runs_dir))

    async def open_chat(pilot):
        await app.push_screen(ChatScreen(tuned, base=base))
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(120, 40), run_before=open_chat)
