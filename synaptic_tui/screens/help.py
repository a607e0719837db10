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

    def __init__(self, screen_keys: list[tuple[str, str]] | None = None) -> None:
        super().__init__()
        # Read by the caller before this screen is pushed: once it is, the
        # screen underneath is no longer the one whose keys are active.
        self.screen_keys = screen_keys or []

    def compose(self) -> ComposeResult:
        lines = [INTRO, "## Actions", "", "| Key | Action | What it does |", "|---|---|---|"]
        lines += [f"| `{a.key}` | {a.title} | {a.help} |" for a in ACTIONS]
        screen_keys = self.screen_keys
        if screen_keys:
            lines += ["", "## This screen", "", "| Key | Does |", "|---|---|"]
            lines += [f"| `{key}` | {desc} |" for key, desc in screen_keys]
        lines += [
            "", "## Everywhere", "", "| Key | Does |", "|---|---|",
            "| `ctrl+p` | Command palette |", "| `F1` or `?` | This help |", "| `escape` | Back |", "| `q` | Quit |",
        ]
        with VerticalScroll(id="help-body"):
            yield Markdown("\n".join(lines))
