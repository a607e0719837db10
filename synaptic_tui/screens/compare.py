"""Two or more runs side by side: their configs, differences highlighted, and their curves overlaid."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual_plotext import PlotextPlot

from synaptic_tui.compare import ConfigRow, config_rows
from synaptic_tui.follow import JsonlFollower
from synaptic_tui.monitor import CURVES, RunMetrics
from synaptic_tui.runs import load_run, read_run_config
from synaptic_tui.scoring import checkpoint_score

CURVE_TITLES = {"loss": "loss", "eval_loss": "eval loss", "kl": "KL", "rewards/margins": "margin"}


class ComparedRun:
    """One run's config and its metrics, followed by byte offset like the run view."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.run_id = run_dir.name
        self.config = read_run_config(run_dir)
        run = load_run(run_dir)
        self.method = (run.method if run else str(self.config.get("method", "sft"))) or "sft"
        self.metrics = RunMetrics(self.method)
        path = run.metrics_path if run is not None and run.metrics_path else run_dir / "metrics.jsonl"
        self.follower = JsonlFollower(path)

    def poll(self) -> bool:
        """Read what is new; True when anything changed."""
        changed = False
        while True:
            records, reset, more = self.follower.poll_records()
            if reset:
                self.metrics.reset()
            if records:
                self.metrics.add(records)
            changed = changed or bool(records) or reset
            if not more:
                return changed

    def summary(self) -> dict[str, str]:
        from synaptic_tui.jobs import reconcile

        run = load_run(self.run_dir)
        status = reconcile(run) if run is not None else None
        latest = self.metrics.latest
        loss, eval_loss = latest.get("loss"), latest.get("eval_loss")
        score = checkpoint_score("kto", latest) if self.method == "kto" else None
        return {
            "state": status.state if status else "missing",
            "step": f"{status.step}/{status.max_steps or '?'}" if status else "",
            "best checkpoint": str(status.extra.get("best_checkpoint") or "") if status else "",
            "last loss": f"{loss:.4f}" if isinstance(loss, (int, float)) else "",
            "last eval loss": f"{eval_loss:.4f}" if isinstance(eval_loss, (int, float)) else "",
            "last KTO score": f"{score:.4f}" if score is not None else "",
        }


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("d", "toggle_differences", "Differences only", id="compare.differences"),
        Binding("k", "next_curve", "Next curve", id="compare.curve"),
    ]

    DEFAULT_CSS = """
    CompareScreen #compare-config { height: 1fr; }
    CompareScreen #compare-plot { height: 1fr; min-height: 10; }
    """

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.runs = [ComparedRun(Path(d)) for d in run_dirs]
        self.rows: list[ConfigRow] = config_rows([r.config for r in self.runs])
        self.differences_only = False
        keys: list[str] = []
        for run in self.runs:
            keys += [k for k in CURVES.get(run.method, CURVES["sft"]) if k not in keys]
        self.curves = keys  # "loss" first: every method logs it
        self.curve = keys[0]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="compare-title", classes="pane-title")
        yield DataTable(id="compare-config", cursor_type="row", zebra_stripes=True)
        yield PlotextPlot(id="compare-plot")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Compare " + ", ".join(r.run_id for r in self.runs)
        table = self.query_one("#compare-config", DataTable)
        table.add_column("", key="key", width=34)
        for run in self.runs:
            table.add_column(run.run_id, key=run.run_id, width=max(16, min(len(run.run_id), 30)))
        for run in self.runs:
            run.poll()
        self.show_config()
        self.plot()
        table.focus()
        self.set_interval(1.0, self.refresh_runs)

    # --- configs ------------------------------------------------------------------------

    def show_config(self) -> None:
        table = self.query_one("#compare-config", DataTable)
        cursor = table.cursor_row
        table.clear()
        summaries = [run.summary() for run in self.runs]
        for name in summaries[0]:
            values = [s[name] for s in summaries]
            table.add_row(Text(name, style="bold"), *values, key=f"summary:{name}")
        differing = sum(row.differs for row in self.rows)
        for row in self.rows:
            if self.differences_only and not row.differs:
                continue
            style = "bold yellow" if row.differs else "dim"
            table.add_row(Text(("≠ " if row.differs else "  ") + row.key, style=style),
                          *(Text(v, style=style) for v in row.values), key=row.key)
        table.move_cursor(row=min(cursor, max(table.row_count - 1, 0)))
        shown = "differences only" if self.differences_only else "d: differences only"
        self.query_one("#compare-title", Static).update(
            f"Comparing {len(self.runs)} runs: [b]{differing}[/] of {len(self.rows)} config keys differ ({shown})")

    def action_toggle_differences(self) -> None:
        self.differences_only = not self.differences_only
        self.show_config()

    def refresh_runs(self) -> None:
        changed = [run.poll() for run in self.runs]
        table = self.query_one("#compare-config", DataTable)
        summaries = [run.summary() for run in self.runs]
        for name in summaries[0]:
            for run, summary in zip(self.runs, summaries):
                if table.get_cell(f"summary:{name}", run.run_id) != summary[name]:
                    table.update_cell(f"summary:{name}", run.run_id, summary[name])
        if any(changed):
            self.plot()

    # --- curves -------------------------------------------------------------------------

    def action_next_curve(self) -> None:
        self.curve = self.curves[(self.curves.index(self.curve) + 1) % len(self.curves)]
        self.plot()

    def plotted(self) -> dict[str, tuple[list[int], list[float]]]:
        """The series drawn: run id -> (steps, values) of the current curve."""
        shown = {}
        for run in self.runs:
            series = run.metrics.series.get(self.curve)
            if series is not None and series.values:
                shown[run.run_id] = (list(series.steps), list(series.values))
        return shown

    def plot(self) -> None:
        widget = self.query_one(PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        plotted = self.plotted()
        for run_id, (steps, values) in plotted.items():
            plt.plot(steps, values, label=run_id, marker="braille")
        title = CURVE_TITLES.get(self.curve, self.curve)
        others = len(self.curves) - 1
        plt.title(f"{title} by step" + (f"  (k: {others} more)" if others else "") + ("" if plotted else ": no data yet"))
        plt.xlabel("step")
        widget.refresh()
