"""The doctor screen: what this machine can do, checked live."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

STATUS_STYLE = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]fail[/]", "info": "[dim]info[/]"}


class DoctorScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("r", "recheck", "Check again", id="doctor.recheck"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Doctor", classes="pane-title")
        yield Static("Checking this machine...", id="doctor-state")
        yield DataTable(id="checks", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Doctor"
        table = self.query_one(DataTable)
        table.add_column("Check", key="check", width=12)
        table.add_column("Status", key="status", width=6)
        table.add_column("Result", key="result")
        table.focus()
        self.action_recheck()

    def action_recheck(self) -> None:
        self.query_one("#doctor-state", Static).update("Checking this machine...")
        self.run_checks()

    @work(exclusive=True, group="doctor", exit_on_error=False)
    async def run_checks(self) -> None:
        try:
            checks = await self.app.services.doctor(self.app.services.runs_dir)
        except Exception as exc:  # a failing check must show, not crash the app
            self.query_one("#doctor-state", Static).update(f"[red]Doctor failed:[/] {exc}")
            return
        table = self.query_one(DataTable)
        table.clear()
        for check in checks:
            table.add_row(check.name, STATUS_STYLE.get(check.status, check.status), check.summary, key=check.name)
        problems = sum(c.status in ("warn", "fail") for c in checks)
        self.query_one("#doctor-state", Static).update(
            f"{len(checks)} checks, {problems} need attention" if problems else f"{len(checks)} checks, all fine"
        )
