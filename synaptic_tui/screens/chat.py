"""Chat with a served model, side by side with its base model: the same message to both, replies streamed.

Each side is served by `synaptic-tui serve`'s code (started or reused from the
App, so leaving the screen never stops a server half-way up). A system prompt
and tools are optional, or both come from a prompt-set case. Tool calls are
shown as blocks with a schema check; each reply's tokens/s is under its column.
History is kept per model in the run's directory (synaptic_tui.chat).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, Input, OptionList, Static
from textual.widgets.option_list import Option

from synaptic_tui.chat import (ChatSide, Conversation, append, load_last, new_conversation, read_reply, side_for,
                               tokens_per_second)
from synaptic_tui.widgets.chat_view import ChatColumn, stats_line


@dataclass
class ChatCase:
    """What a prompt-set case brings to a chat: its system prompt, tools and question."""

    case_id: str
    question: str
    system: str | None = None
    tools: list[dict[str, Any]] | None = None


class CasePicker(ModalScreen[ChatCase | None]):
    """A prompt-set case to chat with: its system prompt, tools and question."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close", id="cases.close")]

    def compose(self) -> ComposeResult:
        from evaluator.prompts import discover_prompt_sets, load_prompt_set

        from synaptic_tui.screens.evaluate import prompt_dirs

        self.cases: dict[str, ChatCase] = {}
        options = []
        for directory in prompt_dirs():
            for info in discover_prompt_sets(directory):
                if info.error:
                    continue
                for case in load_prompt_set(info.path).cases:
                    key = f"{info.name}/{case.id}"
                    self.cases[key] = ChatCase(case.id, case.question, case.system, case.tools or None)
                    tools = f" ({len(case.tools)} tools)" if case.tools else ""
                    options.append(Option(f"{escape(key)}{tools}: {escape(case.question[:70])}", id=key))
        with Vertical(id="case-picker"):
            yield Static("A case to chat with: its system prompt, tools and question", classes="pane-title")
            yield OptionList(*options)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.cases[str(event.option.id)])


class ChatScreen(Screen):
    """`primary` is RUN[:CHECKPOINT], a model, or a ChatSide already served; `base` the run's base model."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("ctrl+g", "toggle_base", "Beside base", id="chat.base"),
        Binding("ctrl+l", "load_case", "Load a case", id="chat.case"),
        Binding("ctrl+o", "system_prompt", "System prompt", id="chat.system"),
        Binding("ctrl+t", "clear_tools", "Clear tools", id="chat.tools"),
        Binding("ctrl+n", "new_conversation", "New chat", id="chat.new"),
        Binding("ctrl+r", "resend", "Resend", id="chat.resend"),
    ]

    class Served(Message):
        def __init__(self, side: ChatSide, kind: str, payload: Any) -> None:
            super().__init__()
            self.side, self.kind, self.payload = side, kind, payload

    def __init__(self, primary: str | ChatSide | None = None, *, base: str | ChatSide | None = None,
                 beside: bool = True,
                 case: ChatCase | None = None, send_case: bool = False) -> None:
        super().__init__()
        self.primary_ref = primary
        self.base_ref = base
        self.beside = beside and base is not None
        self.case = case
        self.send_case = send_case  # from an eval's case: ask it as soon as the models are up
        self.sides: list[ChatSide] = []
        self.conversations: dict[int, Conversation] = {}
        self.system: str | None = case.system if case else None
        self.tools: list[dict[str, Any]] = list(case.tools or []) if case else []
        self._pending: str | None = None

    # --- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="chat-setup")
        yield Input(placeholder="RUN[:CHECKPOINT] or a model (demo, smollm2, a path): enter serves it",
                    id="chat-target")
        yield Input(placeholder="system prompt (enter sets it and starts a new chat; empty: none)", id="chat-system")
        yield Horizontal(id="chat-columns")
        yield Input(placeholder="message: enter sends it to every model", id="chat-input")
        yield Footer()

    async def on_mount(self) -> None:
        self.sub_title = "Chat"
        self.query_one("#chat-system", Input).display = False
        target = self.query_one("#chat-target", Input)
        if self.primary_ref is None:
            from synaptic_tui.servers.launch import list_servers

            live = list_servers(self.app.services.runs_dir, live_only=True)
            if live:
                target.value = live[0].ref
            self.show_setup("Pick what to chat with: a run's checkpoint (RUN:checkpoint-N, RUN:base) or a model.")
            target.focus()
            return
        target.display = False
        await self.open_sides()

    async def open_sides(self) -> None:
        """One column per model; each restores its last conversation and is served."""
        runs_dir = self.app.services.runs_dir
        refs = [self.primary_ref] + ([self.base_ref] if self.beside else [])
        for ref in refs:
            if isinstance(ref, ChatSide):
                side = ref
            else:
                try:
                    side = side_for(ref, runs_dir)
                except LookupError as exc:
                    self.notify(str(exc), severity="error", title="Cannot chat")
                    continue
            await self.add_side(side)
        self.show_setup()
        self.query_one("#chat-input", Input).focus()
        if self.case is not None:
            self.start_conversation(note=f"case {self.case.case_id}")
            if not self.send_case:
                self.query_one("#chat-input", Input).value = self.case.question
            elif self.sides and all(s.ready for s in self.sides):
                self.send(self.case.question)
            else:
                self._pending = self.case.question  # asked once every model is served

    async def add_side(self, side: ChatSide) -> None:
        index = len(self.sides)
        self.sides.append(side)
        column = ChatColumn(side.label, id=f"chat-col-{index}")
        await self.query_one("#chat-columns", Horizontal).mount(column)
        self._restore(index)
        if side.ready:
            column.set_state(f"{escape(side.model or '')} @ {escape(side.url or '')}")
        else:
            column.set_state("starting its server…")
            self.app.serve(side.ref, lambda kind, payload, s=side: self.post_message(self.Served(s, kind, payload)))

    def _restore(self, index: int) -> None:
        side = self.sides[index]
        if self.case is not None:
            return
        conversation = load_last(side.history)
        if conversation is None:
            return
        self.conversations[index] = conversation
        if index == 0:
            self.system, self.tools = conversation.system, list(conversation.tools)
            self.show_setup()
        column = self.column(index)
        for message in conversation.messages:
            if message["role"] == "user":
                column.add_user(message["content"])
            elif message["role"] == "error":
                column.add_error(message["content"])
            else:
                reply = read_reply(message.get("content") or "", message.get("tool_calls"), conversation.tools,
                                   side.tool_format)
                column.add_reply(reply.prose, reply.calls, reply.parse_errors)
        if conversation.messages:
            column.add_note(f"(history: {len(conversation.messages)} messages; ctrl+n starts a new chat)")
        last = next((m for m in reversed(conversation.messages) if m["role"] == "assistant"), None)
        if last is not None and last.get("latency_s") is not None:
            column.set_stats(stats_line(last.get("tokens_per_s"), last.get("completion_tokens"),
                                                         last.get("first_token_s"), last["latency_s"]))

    def column(self, index: int) -> ChatColumn:
        return self.query_one(f"#chat-col-{index}", ChatColumn)

    def show_setup(self, text: str | None = None) -> None:
        if text is None:
            parts = [f"system: {escape(self.system[:60])}" if self.system else "no system prompt",
                     f"{len(self.tools)} tool{'s' if len(self.tools) > 1 else ''}: "
                     f"{escape(', '.join(t['function']['name'] for t in self.tools)[:60])}"
                     if self.tools else "no tools"]
            if self.case is not None:
                parts.append(f"case {escape(self.case.case_id)}")
            text = "   ".join(parts)
        self.query_one("#chat-setup", Static).update(text)

    # --- serving ------------------------------------------------------------------------

    def on_chat_screen_served(self, event: Served) -> None:
        if event.side not in self.sides:
            return
        index = self.sides.index(event.side)
        column = self.column(index)
        if event.kind == "progress":
            column.set_state(escape(str(event.payload))[:300])
            return
        if event.kind == "failed":
            column.set_state(f"[red]could not serve it[/]: {escape(str(event.payload))}")
            return
        server = event.payload
        side = event.side
        side.url, side.model, side.engine, side.tool_parser = server.url, server.model_id, server.engine, \
            server.tool_parser
        side.tool_format = side.tool_format or server.tool_format
        tools = (f"tool calls parsed by the server ({server.tool_parser})" if server.tool_parser
                 else f"tool calls read from the text ({side.tool_format or 'every format'})")
        column.set_state(f"{escape(server.engine)} @ {escape(server.url)}   {escape(tools)}")
        if self._pending and all(s.ready for s in self.sides):
            text, self._pending = self._pending, None
            self.send(text)

    # --- conversation -------------------------------------------------------------------

    def conversation(self, index: int) -> Conversation:
        if index not in self.conversations:
            self.conversations[index] = new_conversation(self.sides[index].history, self.system, self.tools,
                                                         self.case.case_id if self.case else None)
        return self.conversations[index]

    def start_conversation(self, note: str = "new chat") -> None:
        for index, side in enumerate(self.sides):
            self.conversations[index] = new_conversation(side.history, self.system, self.tools,
                                                         self.case.case_id if self.case else None)
            column = self.column(index)
            column.clear()
            column.add_note(f"({note})")
        self.show_setup()

    @on(Input.Submitted, "#chat-target")
    async def target_chosen(self, event: Input.Submitted) -> None:
        from synaptic_tui.servers.targets import BASE, TargetError, resolve_target

        ref = event.value.strip()
        try:
            target = resolve_target(ref, self.app.services.runs_dir)
        except TargetError as exc:
            self.notify(str(exc), severity="error", title="Cannot chat")
            return
        self.primary_ref = target.portable_ref
        if target.run_dir is not None and target.checkpoint:
            self.base_ref, self.beside = f"{target.run_dir}:{BASE}", True
        event.input.display = False
        await self.open_sides()

    @on(Input.Submitted, "#chat-input")
    def message_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if not self.sides:
            self.notify("Pick what to chat with first.", severity="warning")
            return
        if not any(s.ready for s in self.sides):
            self._pending = text
            self.notify("Sent as soon as the servers are up.")
            event.input.value = ""
            return
        event.input.value = ""
        self.send(text)

    def send(self, text: str) -> None:
        """The same message to every model that is up; each answers in its own worker."""
        for index, side in enumerate(self.sides):
            column = self.column(index)
            if not side.ready:
                column.add_note("(not served yet: this message was not sent here)")
                continue
            message = {"role": "user", "content": text}
            self.conversation(index).messages.append(message)
            append(side.history, message)
            column.add_user(text)
            self.ask(index)

    def ask(self, index: int) -> None:
        self.run_worker(self._reply(index), group=f"chat-reply-{index}", exclusive=True, exit_on_error=False)

    async def _reply(self, index: int) -> None:
        from evaluator.clients import BackendError, OpenAIClient

        side, column = self.sides[index], self.column(index)
        conversation = self.conversation(index)
        column.start_reply()
        streamed: list[str] = []

        def on_text(piece: str) -> None:
            streamed.append(piece)
            column.stream(piece)

        # One retry: a server that died answers nothing, and saying so beats a long backoff.
        client = OpenAIClient(side.url, timeout=600, retries=1, backoff=0.2)
        try:
            result = await client.chat(side.model, conversation.for_request(), conversation.tools or None,
                                       temperature=0.0, on_text=on_text)
        except BackendError as exc:
            column.fail_reply(str(exc))
            record = {"role": "error", "content": str(exc), "kind": exc.kind}
            conversation.messages.append(record)
            append(side.history, record)
            return
        except BaseException:
            # Leaving the screen mid-reply: keep what came, marked, so the history says what happened.
            if streamed:
                append(side.history, {"role": "assistant", "content": "".join(streamed), "interrupted": True})
            raise
        finally:
            await client.aclose()
        reply = read_reply(result.content, result.tool_calls, conversation.tools, side.tool_format)
        column.add_reply(reply.prose, reply.calls, reply.parse_errors)
        speed = tokens_per_second(result.completion_tokens, result.latency_s, result.first_token_s)
        column.set_stats(stats_line(speed, result.completion_tokens, result.first_token_s, result.latency_s))
        record = {"role": "assistant", "content": result.content, "tool_calls": result.tool_calls or None,
                  "model": side.model, "engine": side.engine, "finish_reason": result.finish_reason,
                  "completion_tokens": result.completion_tokens, "latency_s": round(result.latency_s, 3),
                  "first_token_s": round(result.first_token_s, 3) if result.first_token_s is not None else None,
                  "tokens_per_s": round(speed, 2) if speed else None}
        conversation.messages.append(record)
        append(side.history, record)

    # --- keys ---------------------------------------------------------------------------

    async def action_toggle_base(self) -> None:
        if self.base_ref is None:
            self.notify("Beside the base model needs a run's checkpoint to chat with.", severity="warning")
            return
        if self.beside:
            self.beside = False
            await self.query_one(f"#chat-col-{len(self.sides) - 1}").remove()
            self.conversations.pop(len(self.sides) - 1, None)
            self.sides.pop()
            return
        self.beside = True
        try:
            side = self.base_ref if isinstance(self.base_ref, ChatSide) else side_for(self.base_ref,
                                                                                       self.app.services.runs_dir)
        except LookupError as exc:
            self.notify(str(exc), severity="error")
            return
        await self.add_side(side)

    def action_load_case(self) -> None:
        def chosen(case: ChatCase | None) -> None:
            if case is None:
                return
            self.case, self.system, self.tools = case, case.system, list(case.tools or [])
            self.start_conversation(note=f"case {case.case_id}")
            chat_input = self.query_one("#chat-input", Input)
            chat_input.value = case.question
            chat_input.focus()

        self.app.push_screen(CasePicker(), chosen)

    def action_system_prompt(self) -> None:
        system = self.query_one("#chat-system", Input)
        system.display = True
        system.value = self.system or ""
        system.focus()

    @on(Input.Submitted, "#chat-system")
    def system_set(self, event: Input.Submitted) -> None:
        self.system = event.value.strip() or None
        event.input.display = False
        self.start_conversation(note="new system prompt: new chat")
        self.query_one("#chat-input", Input).focus()

    def action_clear_tools(self) -> None:
        if not self.tools:
            self.notify("No tools to clear (ctrl+l loads a case with tools).")
            return
        self.tools = []
        self.start_conversation(note="tools cleared: new chat")

    def action_new_conversation(self) -> None:
        self.case = None
        self.start_conversation()

    def action_resend(self) -> None:
        """Ask again where the last request failed (the message is already in the conversation)."""
        asked = False
        for index, side in enumerate(self.sides):
            messages = self.conversation(index).messages
            if side.ready and messages and messages[-1]["role"] == "error":
                messages.pop()
                self.ask(index)
                asked = True
        if not asked:
            self.notify("Nothing failed to resend.")


def chat_refs_for(run_dir: Path, checkpoint: str) -> tuple[str, str]:
    """A checkpoint's chat: the checkpoint and, beside it, its run's base model."""
    return f"{Path(run_dir).resolve()}:{checkpoint}", f"{Path(run_dir).resolve()}:base"
