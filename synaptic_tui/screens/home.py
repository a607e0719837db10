"""The home screen: what you can do, and the runs you did most recently."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from synaptic_tui.app import ACTIONS
from synaptic_tui.paths import display_path
from synaptic_tui.widgets.runs_table import RunsTable


class HomeScreen(Screen):
    # The action keys are listed on the screen itself, so the footer keeps to q, F1 and the palette.
    BINDINGS = [
        Binding(action.key, f"app.open('{action.name}')", action.title, show=False, id=f"home.{action.name}")
        for action in ACTIONS
    ]

    def compose(self) -> ComposeResult:
        runs_dir = self.app.services.runs_dir
        yield Header()
        yield Static("   ".join(f"[b]{a.key}[/] {a.title}" for a in ACTIONS if a.on_bar), id="action-bar")
        yield Static("Recent runs", classes="pane-title")
        yield RunsTable(runs_dir, limit=20, refresh_every=self.app.services.refresh_seconds, id="recent-runs")
        yield Static(f"No runs yet in {escape(display_path(runs_dir))}. Press [b]n[/] to start one.", id="no-runs")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(RunsTable).focus()

    def on_data_table_row_selected(self, event: RunsTable.RowSelected) -> None:
        self.app.action_open("runs")

    def on_runs_table_loaded(self, event: RunsTable.Loaded) -> None:
        self.query_one("#no-runs").display = event.count == 0
