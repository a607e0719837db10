"""Help: every key of the app and of the screen underneath."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from synaptic_tui.app import ACTIONS

INTRO = """\
# synaptic-tui

Fine-tune a small LLM from the terminal: train, watch, pick a checkpoint,
export, upload, evaluate. Everything works from the keyboard; `ctrl+p` opens
the command palette with every action.
"""


class HelpScreen(ModalScreen):
    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="help.close"),
        Binding("f1", "dismiss", "Close", show=False, id="help.close_f1"),
        Binding("question_mark", "dismiss", "Close", show=False, id="help.close_q"),
    ]

    def compose(self) -> ComposeResult:
        lines = [INTRO, "## Actions", "", "| Key | Action | What it does |", "|---|---|---|"]
        lines += [f"| `{a.key}` | {a.title} | {a.help} |" for a in ACTIONS]
        below = self.app.screen_stack[-1] if self.app.screen_stack else None
        screen_keys = [
            (b.key, b.description) for b in getattr(below, "BINDINGS", []) if isinstance(b, Binding) and b.description
        ]
        if screen_keys:
            lines += ["", "## This screen", "", "| Key | Does |", "|---|---|"]
            lines += [f"| `{key}` | {desc} |" for key, desc in screen_keys]
        lines += [
            "", "## Everywhere", "", "| Key | Does |", "|---|---|",
            "| `ctrl+p` | Command palette |", "| `F1` or `?` | This help |", "| `escape` | Back |", "| `q` | Quit |",
        ]
        with VerticalScroll(id="help-body"):
            yield Markdown("\n".join(lines))
