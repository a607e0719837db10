"""Screens whose feature lands with a later issue: they say plainly what is coming."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static


class ComingScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back", id="screen.back")]

    def __init__(self, title: str, coming: str) -> None:
        super().__init__()
        self.title_text = title
        self.coming = coming

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="coming"):
            yield Static(self.title_text, classes="pane-title")
            yield Static(f"Not available yet. {self.coming}", classes="coming-note")
            yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        return iter(())

    def on_mount(self) -> None:
        self.sub_title = self.title_text
