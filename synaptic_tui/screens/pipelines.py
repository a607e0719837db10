"""Pipelines: the list of them, and one pipeline's stages live, each opening its run or eval."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from synaptic_tui.pipeline import PipelineState, StageState, list_pipelines, reconcile_pipeline
from synaptic_tui.widgets.runs_table import format_duration


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start:
        return None
    begun = datetime.fromisoformat(start)
    ended = datetime.fromisoformat(end) if end else datetime.now(begun.tzinfo)
    return (ended - begun).total_seconds()


def duration(start: str | None, end: str | None) -> str:
    seconds = _seconds(start, end)
    return format_duration(seconds) if seconds is not None else ""


def key_result(stage: StageState) -> str:
    """The one thing a user wants to know about a finished stage."""
    result = stage.result
    if stage.error:
        return stage.error.strip().splitlines()[-1][:80]
    if stage.name in ("sft", "kto") and result:
        return f"{result.get('run_id', '')}  best {result.get('best_checkpoint') or '?'}"
    if stage.name == "select" and result:
        return f"{result.get('checkpoint')} of {result.get('run_id')}"
    if stage.name == "export" and result.get("exports"):
        return ", ".join(result["exports"])
    if stage.name == "upload" and result:
        return str(result.get("url") or result.get("note") or "")
    if stage.name == "eval" and result.get("pass_rate") is not None:
        text = f"pass rate {result['pass_rate']:.0%}"
        if result.get("baseline_pass_rate") is not None:
            text += f" (base model {result['baseline_pass_rate']:.0%})"
        return text
    return ""


class PipelinesScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("enter", "open", "Open", id="pipelines.open"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Pipelines", classes="pane-title")
        yield DataTable(id="pipelines", cursor_type="row", zebra_stripes=True)
        yield Static("", id="no-pipelines")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Pipelines"
        table = self.query_one(DataTable)
        for key, label, width in (("id", "Pipeline", 36), ("state", "State", 10), ("stages", "Stages", 50),
                                  ("duration", "Duration", 9)):
            table.add_column(label, key=key, width=width)
        self.show(list_pipelines(self.app.services.runs_dir))
        table.focus()
        self.set_interval(self.app.services.refresh_seconds, self.reload)

    def reload(self) -> None:
        self.run_worker(self._load, exclusive=True, group="list-pipelines", exit_on_error=False)

    async def _load(self) -> None:
        self.show(await asyncio.to_thread(list_pipelines, self.app.services.runs_dir))

    def show(self, found: list[tuple[Path, PipelineState]]) -> None:
        table = self.query_one(DataTable)
        rows = [(path.name, state.state, " ".join(f"{s.name}:{s.state}" for s in state.stages),
                 duration(state.started_at, state.ended_at)) for path, state in found]
        current = [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
        if rows != current:
            selected = table.cursor_row
            table.clear()
            for row in rows:
                table.add_row(*row, key=row[0])
            table.move_cursor(row=min(selected, max(len(rows) - 1, 0)))
        note = self.query_one("#no-pipelines", Static)
        note.display = not rows
        note.update("No pipelines yet. Start one with [b]synaptic-tui pipeline --config examples/pipeline.yaml[/].")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            row_key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key
            self.app.push_screen(PipelineScreen(self.app.services.runs_dir / str(row_key.value)))


def baseline_summary(result: dict) -> list[str]:
    """The fine-tune against the base model, from the eval stage's comparison file."""
    import json

    try:
        comparison = json.loads(Path(result["comparison"]).read_text())
    except (KeyError, OSError, ValueError):
        return []
    overall = comparison.get("overall") or {}
    pct = lambda v: "n/a" if v is None else f"{v:.0%}"  # noqa: E731
    delta = overall.get("delta")
    lines = [f"[b]against the base model[/]: {pct(overall.get('b'))} vs {pct(overall.get('a'))}"
             + (f" ({delta:+.0%})" if delta is not None else "")
             + f", {len(comparison.get('fixed') or [])} cases fixed, {len(comparison.get('broken') or [])} broken"]
    for tag, row in (comparison.get("per_tag") or {}).items():
        change = f"{row['delta']:+.0%}" if row.get("delta") is not None else "n/a"
        lines.append(f"  {escape(tag):<20} {pct(row.get('b'))} (base {pct(row.get('a'))}, {change})")
    return lines


class PipelineScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("enter", "open_stage", "Open stage", id="pipeline.open_stage"),
        Binding("v", "compare_baseline", "Compare with base", id="pipeline.compare"),
        Binding("c", "cancel", "Cancel", id="pipeline.cancel"),
        Binding("R", "resume", "Resume", id="pipeline.resume"),
    ]

    def __init__(self, pipeline_dir: Path) -> None:
        super().__init__()
        self.pipeline_dir = Path(pipeline_dir)
        self.state: PipelineState | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="pipeline-state")
        yield DataTable(id="stages", cursor_type="row")
        yield Static("", id="stage-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.pipeline_dir.name
        table = self.query_one("#stages", DataTable)
        for key, label, width in (("stage", "Stage", 8), ("state", "State", 10), ("duration", "Duration", 9),
                                  ("result", "Result", 80)):
            table.add_column(label, key=key, width=width)
        self.refresh_state()
        table.focus()
        self.set_interval(1.0, self.refresh_state)

    def refresh_state(self) -> None:
        state = reconcile_pipeline(self.pipeline_dir)
        if state is None:
            self.query_one("#pipeline-state", Static).update(f"[red]{escape(str(self.pipeline_dir))}: no pipeline.json[/]")
            return
        self.state = state
        parts = [f"[b]{state.state}[/]", f"{sum(s.state == 'succeeded' for s in state.stages)}/{len(state.stages)} stages",
                 duration(state.started_at, state.ended_at)]
        if state.error:
            parts.append(f"[red]{escape(state.error)}[/]")
        self.query_one("#pipeline-state", Static).update("   ".join(p for p in parts if p))
        table = self.query_one("#stages", DataTable)
        for stage in state.stages:
            row = (stage.name, stage.state, duration(stage.started_at, stage.ended_at), key_result(stage))
            if stage.name not in table.rows:
                table.add_row(*row, key=stage.name)
            else:
                for key, value in zip(("stage", "state", "duration", "result"), row):
                    if table.get_cell(stage.name, key) != value:
                        table.update_cell(stage.name, key, value)
        self.show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def highlighted(self) -> StageState | None:
        table = self.query_one("#stages", DataTable)
        if self.state is None or not table.row_count:
            return None
        name = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        return self.state.stage(str(name))

    def show_detail(self) -> None:
        stage = self.highlighted()
        if stage is None:
            return
        lines = [f"[b]{stage.name}[/] {stage.state}"]
        lines += [f"{escape(str(k))}: {escape(str(v))}" for k, v in stage.result.items() if v not in (None, "", [], {})]
        if stage.error:
            lines.append(f"[red]{escape(stage.error)}[/]")
        if stage.name == "eval":
            lines += baseline_summary(stage.result)
            if stage.result.get("eval_dir"):
                lines.append("enter: open its results" + ("   v: compare with the base model"
                                                          if stage.result.get("baseline_dir") else ""))
        elif stage.run_id:
            lines.append("enter: open its run")
        self.query_one("#stage-detail", Static).update("\n".join(lines))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_stage()

    def action_open_stage(self) -> None:
        stage = self.highlighted()
        eval_dir = stage.result.get("eval_dir") if stage else None
        if eval_dir and Path(eval_dir).is_dir():
            from synaptic_tui.screens.evaluate import EvalResultsScreen

            self.app.push_screen(EvalResultsScreen(Path(eval_dir)))
            return
        run_id = (stage.run_id or stage.result.get("run_id")) if stage else None
        if run_id and (self.pipeline_dir.parent / run_id).is_dir():
            self.app.show_run(self.pipeline_dir.parent / run_id)
        elif stage is not None:
            self.notify(f"{stage.name} has no run to open.", severity="warning")

    def action_compare_baseline(self) -> None:
        stage = self.state.stage("eval") if self.state else None
        result = stage.result if stage else {}
        if not (result.get("baseline_dir") and result.get("eval_dir")):
            self.notify("No baseline eval: set pipeline.eval.baseline: true to evaluate the base model too.",
                        severity="warning")
            return
        from synaptic_tui.screens.evaluate import EvalCompareScreen

        self.app.push_screen(EvalCompareScreen(Path(result["baseline_dir"]), Path(result["eval_dir"])))

    def action_cancel(self) -> None:
        from synaptic_tui.pipeline import cancel_pipeline
        from synaptic_tui.screens.new_run import ConfirmScreen

        if self.state is None or self.state.state not in ("queued", "running"):
            self.notify("The pipeline is not running.", severity="warning")
            return

        def confirmed(yes: bool) -> None:
            if yes and cancel_pipeline(self.pipeline_dir):
                self.notify("Stop requested: the current stage stops cleanly, then the pipeline ends cancelled.")

        self.app.push_screen(ConfirmScreen(f"Cancel {self.pipeline_dir.name}?"), confirmed)

    def action_resume(self) -> None:
        from synaptic_tui.pipeline import resume_pipeline

        try:
            resume_pipeline(self.pipeline_dir)
        except (ValueError, LookupError) as exc:
            self.notify(str(exc), severity="warning")
            return
        self.notify("Resumed: finished stages are kept.")
        self.refresh_state()
