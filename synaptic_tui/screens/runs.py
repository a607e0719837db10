"""The runs screen: every run under the runs dir (and the original tuner's layouts), live, with their actions."""

from __future__ import annotations

import shutil

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, Input, Static

from synaptic_tui.runs import STATES, UNREADABLE, RunInfo
from synaptic_tui.widgets.runs_table import RunsTable

STATE_FILTERS = (None, *STATES, "unknown", UNREADABLE)
METHOD_FILTERS = (None, "sft", "kto", "mlx")


class MoreStepsScreen(ModalScreen[int | None]):
    """A finished run resumes only to train more steps: how many (enter), or escape for none."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="more_steps.cancel")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="more-steps"):
            yield Static(self.question, id="more-steps-question")
            yield Input(placeholder="steps", type="integer", id="more-steps-input")
            yield Static("[b]enter[/] train them    [b]escape[/] cancel", id="more-steps-keys")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if not value.isdigit() or int(value) < 1:
            self.notify("Give a whole number of steps, 1 or more.", severity="warning")
            return
        self.dismiss(int(value))


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
        if run.problem or reconcile(run).state not in ("queued", "running"):
            self.notify(f"{run.run_id} is not running.", severity="warning")
            return

        def cancel() -> None:
            result = cancel_run(run)
            self.notify(result.message, severity="information" if result else "warning")

        self._confirm(f"Cancel {run.run_id}? It saves a checkpoint first.", cancel)

    def action_resume_run(self) -> None:
        from synaptic_tui.jobs import LaunchRefused, NothingLeftToTrain, plan_resume

        run = self.selected()
        if run is None:
            return
        try:
            plan = plan_resume(run)
        except NothingLeftToTrain as finished:
            # A run that trained all its steps resumes only to train more: ask how many.
            def more(steps: int | None) -> None:
                if steps:
                    try:
                        self._resume(run, plan_resume(run, finished.checkpoint, steps))
                    except LaunchRefused as exc:
                        self.notify(str(exc), severity="warning")

            done = f"trained all {finished.total} steps" if finished.total else "finished"
            self.app.push_screen(MoreStepsScreen(f"{run.run_id} {done}. Train how many more steps from "
                                                 f"{finished.checkpoint}? (the schedule is extended)"), more)
            return
        except LaunchRefused as refused:
            self.notify(str(refused), severity="warning")
            return
        self._confirm(f"Resume {run.run_id} from {plan.checkpoint}?", lambda: self._resume(run, plan))

    def _resume(self, run: RunInfo, plan) -> None:
        from synaptic_tui.jobs import LaunchRefused, resume_run
        from synaptic_tui.run_lock import RunLocked

        try:
            resume_run(run, plan)
        except (LaunchRefused, RunLocked) as exc:
            self.notify(str(exc), severity="warning")
            return
        more = f", to step {plan.max_steps}" if plan.max_steps else ""
        self.notify(f"{run.run_id}: resumed from {plan.checkpoint}{more}.")
        self.query_one(RunsTable).reload()

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
            try:
                if run.path.is_symlink():
                    run.path.unlink()
                else:
                    shutil.rmtree(run.path)
            except OSError as exc:
                self.notify(f"Could not delete {run.run_id}: {exc}", severity="error")
            else:
                self.notify(f"Deleted {run.run_id}.")
            self.query_one(RunsTable).reload()

        self._confirm(f"Delete {run.run_id} and everything in it (checkpoints, exports, evals)?", delete)
