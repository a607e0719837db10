"""A table of runs that keeps itself current by re-listing the runs dir in a worker."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from textual.message import Message
from textual.widgets import DataTable

from synaptic_tui.runs import RunInfo, list_runs

# Fixed widths (no re-measuring on update) that fit 120 columns; the table scrolls sideways below that.
COLUMNS = (
    ("run", "Run", 30),
    ("method", "Method", 6),
    ("engine", "Engine", 12),
    ("model", "Model", 14),
    ("state", "State", 9),
    ("step", "Step", 9),
    ("started", "Started", 11),
    ("duration", "Duration", 8),
)
# The runs screen adds the best checkpoint's score (before the times, so it shows at 120 columns)
# and the dataset; narrower terminals scroll the table sideways.
WIDE_COLUMNS = COLUMNS[:6] + (("best", "Best", 17),) + COLUMNS[6:] + (("dataset", "Dataset", 18),)
SHORT_METRIC = {"margin/KL": "m/KL", "margin": "margin", "eval_loss": "eval", "loss": "loss"}


def best_cell(status) -> str:
    """`@40 0.412 eval`: the best checkpoint's step and the number that made it best (as the trainer
    recorded it when the run ended, ranked by monitor.rank_checkpoints)."""
    name = str(status.extra.get("best_checkpoint") or "").replace("checkpoint-", "@")[:17]
    score = status.extra.get("best_score")
    value = score.get("value") if isinstance(score, dict) else None
    if not name or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or abs(value) > 1e12:
        return name
    return f"{name} {value:.3f} {SHORT_METRIC.get(score.get('metric'), '')}".rstrip()


def parse_time(text: str | None) -> datetime | None:
    """An ISO time from a run's files, or None for anything else (they are untrusted input)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _local(moment: datetime | None) -> str:
    try:
        return moment.astimezone().strftime("%m-%d %H:%M") if moment else ""
    except (OverflowError, ValueError, OSError):  # year 1 or 9999 in a hostile file
        return ""


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def run_cells(run: RunInfo, now: datetime | None = None, wide: bool = False) -> tuple[str, ...]:
    status = run.status
    started = parse_time(status.started_at)
    ended = parse_time(status.ended_at)
    if started and (ended or status.state == "running"):
        duration = format_duration(((ended or now or datetime.now(timezone.utc)) - started).total_seconds())
    else:
        duration = ""
    step = f"{status.step}/{status.max_steps}" if status.max_steps else (str(status.step) if status.step else "")
    cells = (
        run.run_id,
        run.method,
        status.engine or run.platform,
        Path(run.model).name if run.model else "",
        status.state,
        step,
        _local(started),
        duration,
    )
    if wide:
        cells = cells[:6] + (best_cell(status),) + cells[6:] + (Path(run.dataset).name if run.dataset else "",)
    return cells


class RunsTable(DataTable):
    """Runs newest first, one keyed row per run, refreshed every couple of seconds."""

    class Loaded(Message):
        """Posted after each listing, so screens can show an empty state."""

        def __init__(self, count: int) -> None:
            super().__init__()
            self.count = count

    DEFAULT_CSS = """
    RunsTable { height: 1fr; }
    """

    def __init__(self, runs_dir: Path, *, limit: int | None = None, refresh_every: float = 2.0,
                 keep: Callable[[RunInfo], bool] | None = None, wide: bool = False, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.runs_dir = runs_dir
        self.limit = limit
        self.keep = keep
        self.wide = wide
        self.refresh_every = refresh_every
        self.runs: list[RunInfo] = []
        self.marked: list[str] = []  # run ids picked for comparison, in the order picked
        self._shown: list[tuple[str, ...]] | None = None

    def on_mount(self) -> None:
        for key, label, width in WIDE_COLUMNS if self.wide else COLUMNS:
            self.add_column(label, key=key, width=width)
        # The first listing is synchronous (a few ms even for hundreds of runs) so the
        # screen is laid out once with its rows; later refreshes run in a worker.
        self.show_runs(self._limited(self._list()))
        self.set_interval(self.refresh_every, self.reload)

    def reload(self) -> None:
        # The method, not a coroutine: an exclusive worker replaced before it starts never awaits it.
        self.run_worker(self._load, exclusive=True, group="list-runs", exit_on_error=False)

    async def _load(self) -> None:
        self.show_runs(self._limited(await asyncio.to_thread(self._list)))

    def _list(self) -> list[RunInfo]:
        """Runs with their real state: one left `running` by a trainer that died is shown failed."""
        from synaptic_tui.jobs import reconcile

        runs = list_runs(self.runs_dir)
        for run in runs:
            if not run.status.finished and not run.legacy:
                run.status = reconcile(run)
        return runs

    def _limited(self, runs: list[RunInfo]) -> list[RunInfo]:
        if self.keep is not None:
            runs = [run for run in runs if self.keep(run)]
        return runs[: self.limit] if self.limit else runs

    def show_runs(self, runs: list[RunInfo]) -> None:
        rows = [run_cells(run, wide=self.wide) for run in runs]
        if rows == self._shown:
            return
        self.post_message(self.Loaded(len(rows)))
        self.runs = runs
        selected = self.selected_run_id
        self.clear()
        for row in rows:
            self.add_row(self._run_cell(row[0]), *row[1:], key=row[0])
        self._shown = rows
        self.marked = [run_id for run_id in self.marked if run_id in {r[0] for r in rows}]
        if selected is not None and selected in {r[0] for r in rows}:
            self.move_cursor(row=self.get_row_index(selected))

    def _run_cell(self, run_id: str) -> str:
        return f"✓ {run_id}" if run_id in self.marked else run_id

    def toggle_mark(self) -> str | None:
        """Mark or unmark the highlighted run; returns its id."""
        run_id = self.selected_run_id
        if run_id is None:
            return None
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked.append(run_id)
        self.update_cell(run_id, "run", self._run_cell(run_id))
        return run_id

    @property
    def selected_run_id(self) -> str | None:
        if not self.row_count or not self._shown:
            return None
        return self._shown[self.cursor_row][0] if self.cursor_row < len(self._shown) else None
