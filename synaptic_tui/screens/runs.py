"""The runs screen: every run under the runs dir (and the original tuner's layouts), live, with their actions."""

from __future__ import annotations

import shutil

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from synaptic_tui.runs import STATES, RunInfo
from synaptic_tui.widgets.runs_table import RunsTable

STATE_FILTERS = (None, *STATES, "unknown")
METHOD_FILTERS = (None, "sft", "kto", "mlx")


class RunsScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("enter", "open_run", "Open", id="runs.open"),
        Binding("c", "cancel_run", "Cancel", id="runs.cancel"),
        Binding("R", "resume_run", "Resume", id="runs.resume"),
        Binding("x", "delete_run", "Delete", id="runs.delete"),
        Binding("f", "filter_state", "Filter state", id="runs.filter_state"),
        Binding("m", "filter_method", "Filter method", id="runs.filter_method"),
        Binding("space", "mark", "Mark", id="runs.mark"),
        Binding("v", "compare", "Compare marked", id="runs.compare"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.state_filter: str | None = None
        self.method_filter: str | None = None

    def compose(self) -> ComposeResult:
        services = self.app.services
        yield Header()
        yield Static("Runs", classes="pane-title", id="runs-title")
        yield RunsTable(services.runs_dir, refresh_every=services.refresh_seconds, id="all-runs",
                        keep=self.keep, wide=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Runs"
        self.query_one(RunsTable).focus()

    def keep(self, run: RunInfo) -> bool:
        return (self.state_filter in (None, run.state)) and (self.method_filter in (None, run.method))

    def _refilter(self) -> None:
        shown = [f"state {self.state_filter}" if self.state_filter else "", f"method {self.method_filter}" if self.method_filter else ""]
        label = ", ".join(s for s in shown if s)
        self.query_one("#runs-title", Static).update(f"Runs ({label})" if label else "Runs")
        self.query_one(RunsTable).reload()

    def action_filter_state(self) -> None:
        self.state_filter = STATE_FILTERS[(STATE_FILTERS.index(self.state_filter) + 1) % len(STATE_FILTERS)]
        self._refilter()

    def action_filter_method(self) -> None:
        self.method_filter = METHOD_FILTERS[(METHOD_FILTERS.index(self.method_filter) + 1) % len(METHOD_FILTERS)]
        self._refilter()

    def selected(self) -> RunInfo | None:
        table = self.query_one(RunsTable)
        return next((r for r in table.runs if r.run_id == table.selected_run_id), None)

    def on_data_table_row_selected(self, event: RunsTable.RowSelected) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        run = self.selected()
        if run is not None:
            self.app.show_run(run.path)

    def action_mark(self) -> None:
        table = self.query_one(RunsTable)
        if table.toggle_mark() is not None:
            table.action_cursor_down()

    def action_compare(self) -> None:
        from synaptic_tui.screens.compare import CompareScreen

        table = self.query_one(RunsTable)
        if len(table.marked) < 2:
            self.notify("Mark two or more runs with space, then press v to compare them.", severity="warning")
            return
        by_id = {run.run_id: run for run in table.runs}
        self.app.push_screen(CompareScreen([by_id[run_id].path for run_id in table.marked]))

    def _confirm(self, question: str, then) -> None:
        from synaptic_tui.screens.new_run import ConfirmScreen

        self.app.push_screen(ConfirmScreen(question), lambda yes: yes and then())

    def action_cancel_run(self) -> None:
        from synaptic_tui.jobs import cancel_run, reconcile

        run = self.selected()
        if run is None:
            return
        if reconcile(run).state not in ("queued", "running"):
            self.notify(f"{run.run_id} is not running.", severity="warning")
            return

        def cancel() -> None:
            if cancel_run(run):
                self.notify(f"{run.run_id}: stop requested; it saves a checkpoint, then ends cancelled.")
            else:
                self.notify(f"{run.run_id} had already stopped.", severity="warning")

        self._confirm(f"Cancel {run.run_id}? It saves a checkpoint first.", cancel)

    def action_resume_run(self) -> None:
        from synaptic_tui.jobs import launch_training, reconcile

        run = self.selected()
        if run is None:
            return
        checkpoints = [c for c in run.checkpoints() if not c.is_final]
        state = reconcile(run).state
        if run.legacy or state in ("queued", "running") or not checkpoints:
            why = ("is a legacy run" if run.legacy else f"is {state}" if state in ("queued", "running")
                   else "has no checkpoint")
            self.notify(f"{run.run_id} {why}: nothing to resume.", severity="warning")
            return
        last = checkpoints[-1].name

        def resume() -> None:
            launch_training(run.path, resume_from=last)
            self.notify(f"{run.run_id}: resumed from {last}.")
            self.query_one(RunsTable).reload()

        self._confirm(f"Resume {run.run_id} from {last}?", resume)

    def action_delete_run(self) -> None:
        from synaptic_tui.jobs import reconcile

        run = self.selected()
        if run is None:
            return
        if run.legacy:
            self.notify("Legacy Synaptic Tuner runs are read-only here.", severity="warning")
            return
        if reconcile(run).state in ("queued", "running"):
            self.notify(f"{run.run_id} is running: cancel it first.", severity="warning")
            return

        def delete() -> None:
            shutil.rmtree(run.path)
            self.notify(f"Deleted {run.run_id}.")
            self.query_one(RunsTable).reload()

        self._confirm(f"Delete {run.run_id} and everything in it (checkpoints, exports, evals)?", delete)
