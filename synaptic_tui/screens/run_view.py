"""A run, live: state and progress, the checkpoint table, the curves and the trainer's log.

Everything is read from the run directory by byte offset (synaptic_tui.follow),
woken by watchfiles when the directory changes and by a slow timer besides
(a fast one where file events are unavailable), so a new checkpoint or metrics
line shows within about 100 ms and nothing is re-read. Closing the screen or
the app never touches the run.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, Log, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from synaptic_tui.follow import FileFollower, JsonlFollower
from synaptic_tui.monitor import CURVES, RunMetrics
from synaptic_tui.runs import list_checkpoints, load_run, read_run_config
from synaptic_tui.widgets.checkpoint_table import CheckpointTable
from synaptic_tui.widgets.curves import Curves
from synaptic_tui.widgets.runs_table import format_duration, parse_time

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

CHECKPOINT_ACTIONS = (
    ("export", "Export (LoRA, merged, GGUF)"),
    ("upload", "Upload to the Hub"),
    ("evaluate", "Evaluate (served here)"),
    ("chat", "Chat, beside the base model"),
)


class CheckpointActions(ModalScreen[str | None]):
    """What to do with the highlighted checkpoint."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close", id="actions.close")]

    def __init__(self, run_id: str, checkpoint: str) -> None:
        super().__init__()
        self.run_id, self.checkpoint = run_id, checkpoint

    def compose(self) -> ComposeResult:
        with Vertical(id="checkpoint-actions"):
            yield Static(f"{escape(self.run_id)} / [b]{escape(self.checkpoint)}[/]", id="checkpoint-actions-title")
            yield OptionList(*(Option(title, id=name) for name, title in CHECKPOINT_ACTIONS))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class RunScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("enter", "checkpoint_actions", "Actions", id="run.actions"),
        Binding("b", "best", "Best", id="run.best"),
        Binding("c", "cancel_run", "Cancel run", id="run.cancel"),
        Binding("e", "evaluate", "Evaluate", id="run.evaluate"),
        Binding("t", "chat", "Chat", id="run.chat"),
        Binding("l", "focus_log", "Log", id="run.log"),
        Binding("g", "toggle_curves", "Curves", id="run.curves"),
    ]
    # An 80-column terminal has room for the table or the curves, not both side by side.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        config = read_run_config(self.run_dir)
        run = load_run(self.run_dir)
        self.method = (run.method if run else str(config.get("method", "sft"))) or "sft"
        save_steps = (config.get("training") or {}).get("save_steps")
        self.metrics = RunMetrics(self.method, save_steps if isinstance(save_steps, int) else None)
        self.log_tail = FileFollower(self.run_dir / "train.log")
        metrics_path = run.metrics_path if run is not None and run.metrics_path else self.run_dir / "metrics.jsonl"
        self.metrics_tail = JsonlFollower(metrics_path)
        self.legacy = bool(run and run.legacy)
        self._checkpoints_seen: tuple[str, ...] = ()
        self._records_shown = -1

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="run-state")
        yield ProgressBar(id="run-progress", show_eta=False)
        with Horizontal(id="run-panes"):
            yield CheckpointTable(self.method, id="checkpoints")
            with VerticalScroll(id="curves-pane"):
                yield Curves(CURVES.get(self.method, CURVES["sft"]), id="curves")
        yield Log(max_lines=5000, id="run-log")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.run_dir.name
        self.query_one(CheckpointTable).focus()
        self.refresh_files()
        self.refresh_status()
        self.poll_timer = self.set_interval(0.5, self.refresh_files)
        self.set_interval(0.5, self.refresh_status)
        self.watch_run_dir()

    @work(exclusive=True, group="watch-run", exit_on_error=False)
    async def watch_run_dir(self) -> None:
        """Wake on file events; without them (no inotify, network filesystems) poll every 50 ms instead."""
        try:
            from watchfiles import awatch

            async for _ in awatch(self.run_dir, debounce=20, step=10, yield_on_timeout=True, rust_timeout=500):
                self.refresh_files()
        except Exception as exc:  # noqa: BLE001 - any watcher failure means: fall back to polling
            self.poll_timer.stop()
            self.poll_timer = self.set_interval(0.05, self.refresh_files)
            self.log.warning(f"watching {self.run_dir} failed ({exc}); polling instead")

    # --- following the run directory --------------------------------------------------

    def refresh_files(self) -> None:
        try:
            self._refresh_files()
        except NoMatches:
            pass  # the screen is closing: a file event or a queued refresh found its widgets gone

    def _refresh_files(self) -> None:
        update = self.log_tail.poll()
        log = self.query_one(Log)
        if update.reset:  # a rotated or rewritten log: show it afresh
            log.clear()
        if update.lines:
            # Trainers' own progress output (mlx-lm's rich table) is colour-coded even into a file.
            log.write_lines([ANSI_ESCAPE.sub("", line) for line in update.lines])  # follows only at the end
        # Checkpoints first: the metrics keep exact values for the steps they are told about.
        checkpoints = list_checkpoints(self.run_dir, legacy=self.legacy)
        names = tuple(c.name for c in checkpoints)
        if names != self._checkpoints_seen:
            self.metrics.set_checkpoints(c.step for c in checkpoints)
        records, reset, more = self.metrics_tail.poll_records()
        if more or update.more:
            # A big backlog (reopening a long run) is read a chunk per turn of the event loop,
            # so keys and redraws go on meanwhile.
            self.call_later(self.refresh_files)
        if reset:
            self.metrics.reset()
        if records:
            self.metrics.add(records)
        if records or reset or names != self._checkpoints_seen:
            self._checkpoints_seen = names
            rows, best = self.metrics.checkpoint_rows(checkpoints)
            self.query_one(CheckpointTable).show(rows, best)
        if self.metrics.records != self._records_shown:
            self._records_shown = self.metrics.records
            self.query_one(Curves).show(self.metrics.series)

    def refresh_status(self) -> None:
        try:
            self._refresh_status()
        except NoMatches:
            pass  # the screen is closing

    def _refresh_status(self) -> None:
        from synaptic_tui.jobs import reconcile

        run = load_run(self.run_dir)
        if run is None:
            return
        status = reconcile(run)
        if status.write_error:
            self.notify(status.write_error, severity="warning", timeout=10)
        now = datetime.now(timezone.utc)
        started, ended = parse_time(status.started_at), parse_time(status.ended_at)
        total = status.max_steps or 0
        parts = [f"[b]{status.state}[/]", f"engine {escape(status.engine or '?')}", f"step {status.step}/{total or '?'}"]
        if started:
            parts.append(f"elapsed {format_duration(((ended or now) - started).total_seconds())}")
        rate = self.metrics.steps_per_second()
        if rate:
            parts.append(f"{rate:.2f} steps/s")
            if total and status.state == "running":
                parts.append(f"ETA {format_duration(max(0, total - status.step) / rate)}")
        template = status.extra.get("chat_template")
        if isinstance(template, dict) and template.get("name"):
            # Said plainly: a run that trains with another template than the model's own.
            name = str(template["name"])
            parts.append(f"template {escape(name)}" + (" (substituted)" if template.get("source") != "model" else ""))
        if status.state in ("failed", "unreadable") and status.error and status.error.strip():
            parts.append(f"[red]{escape(status.error.strip().splitlines()[-1][:300])}[/]")
        if self.metrics.diverged_at is not None:
            parts.append(f"[red]diverged at step {self.metrics.diverged_at}[/]")
        warnings = status.extra.get("health_warnings")
        if status.state != "failed" and isinstance(warnings, list) and warnings and isinstance(warnings[-1], dict):
            parts.append(f"[yellow]step {warnings[-1].get('step')}: {escape(str(warnings[-1].get('message')))}[/]")
        self.query_one("#run-state", Static).update("   ".join(parts))
        if total:
            self.query_one(ProgressBar).update(total=total, progress=min(status.step, total))

    # --- keys ---------------------------------------------------------------------------

    def action_best(self) -> None:
        table = self.query_one(CheckpointTable)
        table.focus()
        table.action_jump_best()

    def action_focus_log(self) -> None:
        self.query_one(Log).focus()

    def action_toggle_curves(self) -> None:
        if not self.has_class("-narrow"):
            self.notify("The curves are beside the table at this width.", timeout=2)
            return
        self.toggle_class("-show-curves")
        if not self.has_class("-show-curves"):
            self.query_one(CheckpointTable).focus()

    def action_checkpoint_actions(self) -> None:
        checkpoint = self.query_one(CheckpointTable).highlighted
        if checkpoint is None:
            self.notify("No checkpoint yet.", severity="warning")
            return

        def chosen(action: str | None) -> None:
            if action == "evaluate":
                self.action_evaluate()
            elif action == "chat":
                self.action_chat()
            elif action in ("export", "upload"):
                from synaptic_tui.screens.upload import UploadScreen

                self.app.push_screen(UploadScreen(run_dir=self.run_dir, checkpoint=checkpoint))

        self.app.push_screen(CheckpointActions(self.run_dir.name, checkpoint), chosen)

    def action_evaluate(self) -> None:
        """Evaluate the highlighted checkpoint: served here (or on a server already serving it), filed under it."""
        from synaptic_tui.screens.evaluate import EvaluateScreen

        checkpoint = self.query_one(CheckpointTable).highlighted
        if checkpoint is None:
            self.notify("No checkpoint yet.", severity="warning")
            return
        self.app.push_screen(EvaluateScreen(run_dir=self.run_dir, checkpoint=checkpoint))

    def action_chat(self) -> None:
        """Chat with the highlighted checkpoint beside the run's base model."""
        from synaptic_tui.screens.chat import ChatScreen, chat_refs_for

        checkpoint = self.query_one(CheckpointTable).highlighted
        if checkpoint is None:
            self.notify("No checkpoint yet.", severity="warning")
            return
        primary, base = chat_refs_for(self.run_dir, checkpoint)
        self.app.push_screen(ChatScreen(primary, base=base))

    def on_data_table_row_selected(self, event: CheckpointTable.RowSelected) -> None:
        self.action_checkpoint_actions()

    def action_cancel_run(self) -> None:
        from synaptic_tui.screens.new_run import ConfirmScreen

        def confirmed(yes: bool) -> None:
            from synaptic_tui.jobs import cancel_run

            run = load_run(self.run_dir)
            if yes and run is not None:
                result = cancel_run(run)
                self.notify(result.message, severity="information" if result else "warning")

        self.app.push_screen(ConfirmScreen(f"Cancel {self.run_dir.name}? It saves a checkpoint first."), confirmed)
