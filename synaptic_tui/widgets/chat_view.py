"""One model's side of a chat: its name and state, the conversation with tool calls as blocks, the reply's speed.

Streamed text is buffered and drawn at most every 50 ms, not once per token: a
relayout per token is what makes chat UIs stutter.
"""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from synaptic_tui.chat import ReadCall


class ToolCallBlock(Static):
    """A tool call: name, arguments as JSON, and what the schema check found."""

    DEFAULT_CSS = """
    ToolCallBlock { border: round $accent; padding: 0 1; margin: 0 0 1 2; height: auto; }
    ToolCallBlock.-bad { border: round $error; }
    ToolCallBlock.-unchecked { border: round $panel-lighten-2; }
    """

    def __init__(self, call: ReadCall) -> None:
        arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments, indent=2,
                                                                                      ensure_ascii=False)
        super().__init__(Text(arguments))
        self.call = call
        self.border_title = f"tool call: {call.name}" + (" (from the text)" if call.source == "text" else "")
        mark = {True: "✓ ", False: "✗ ", None: ""}[call.ok]
        self.border_subtitle = f"{mark}{call.check}"
        self.add_class({True: "-ok", False: "-bad", None: "-unchecked"}[call.ok])


class ChatMessage(Static):
    DEFAULT_CSS = """
    ChatMessage { height: auto; padding: 0 1; margin-bottom: 1; }
    ChatMessage.-user { background: $boost; }
    ChatMessage.-error { color: $error; }
    ChatMessage.-note { color: $text-muted; }
    """


class ChatColumn(Vertical):
    """A model's column of the Chat screen."""

    DEFAULT_CSS = """
    ChatColumn { width: 1fr; height: 1fr; border: round $panel-lighten-2; }
    ChatColumn:focus-within { border: round $accent; }
    ChatColumn #column-state { height: auto; padding: 0 1; color: $text-muted; }
    ChatColumn #transcript { height: 1fr; }
    ChatColumn #column-stats { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, title: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = title
        self._reply: ChatMessage | None = None
        self._streamed: list[str] = []
        self._drawn = 0

    def compose(self) -> ComposeResult:
        yield Static("", id="column-state")
        yield VerticalScroll(id="transcript", can_focus=True)
        yield Static("", id="column-stats")

    def on_mount(self) -> None:
        self.set_interval(0.05, self._draw_stream)

    @property
    def transcript(self) -> VerticalScroll:
        return self.query_one("#transcript", VerticalScroll)

    def set_state(self, text: str) -> None:
        self.query_one("#column-state", Static).update(text)

    def set_stats(self, text: str) -> None:
        self.query_one("#column-stats", Static).update(text)

    def clear(self) -> None:
        self.transcript.remove_children()
        self._reply, self._streamed, self._drawn = None, [], 0
        self.set_stats("")

    def _mount(self, *widgets) -> None:
        self.transcript.mount(*widgets)
        self.transcript.scroll_end(animate=False)

    def add_user(self, text: str) -> None:
        self._mount(ChatMessage(Text(text), classes="-user"))

    def add_note(self, text: str) -> None:
        self._mount(ChatMessage(Text(text), classes="-note"))

    def add_error(self, text: str) -> None:
        self._mount(ChatMessage(Text(f"error: {text}"), classes="-error"))

    def start_reply(self) -> None:
        self._reply, self._streamed, self._drawn = ChatMessage(Text("…")), [], 0
        self._mount(self._reply)

    def stream(self, piece: str) -> None:
        self._streamed.append(piece)

    def _draw_stream(self) -> None:
        if self._reply is not None and len(self._streamed) != self._drawn:
            self._drawn = len(self._streamed)
            self._reply.update(Text("".join(self._streamed)))
            self.transcript.scroll_end(animate=False)

    def add_reply(self, prose: str, calls: list[ReadCall], parse_errors: list[str] | None = None) -> None:
        """The finished reply: its prose (replacing what was streamed), then each tool call as a block."""
        reply, self._reply = self._reply, None
        text = Text(prose) if prose else Text("(no text)", style="dim")
        if reply is None:
            reply = ChatMessage(text)
            self._mount(reply)
        else:
            reply.update(text)
        blocks: list[Any] = [ToolCallBlock(call) for call in calls]
        blocks += [ChatMessage(Text(f"could not read a tool call: {error}"), classes="-error")
                   for error in parse_errors or []]
        if blocks:
            self._mount(*blocks)
        self.transcript.scroll_end(animate=False)

    def fail_reply(self, message: str) -> None:
        """A request that failed: what was streamed stays, marked cut off, and the error says why."""
        reply, self._reply = self._reply, None
        if reply is not None:
            streamed = "".join(self._streamed)
            if streamed:
                reply.update(Text(streamed + " [cut off]"))
            else:
                reply.remove()
        self.add_error(message)


def stats_line(tokens_per_s: float | None, completion_tokens: int | None, first_token_s: float | None,
               latency_s: float) -> str:
    parts = [f"{tokens_per_s:.1f} tokens/s" if tokens_per_s else "- tokens/s"]
    if completion_tokens is not None:
        parts.append(f"{completion_tokens} tokens")
    if first_token_s is not None:
        parts.append(f"first token {first_token_s:.2f} s")
    parts.append(f"{latency_s:.2f} s")
    return escape("  ".join(parts))
