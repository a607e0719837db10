"""The checkpoint table: one keyed row per checkpoint, the best one starred, sortable, updated in place."""

from __future__ import annotations

import math
from typing import Any

from textual.binding import Binding
from textual.widgets import DataTable

from synaptic_tui.monitor import CheckpointRow, kto_score_cell

BEST = "★"
DIVERGED = "✗"  # saved after the loss or grad norm went NaN/infinite: never best, never exported


def _num(value: Any, fmt: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan / inf: a diverged run shows it
    return format(value, fmt)


# (key, label, width, cell) per method; cells are formatted here (DataTable would show 1e-5 as 0.00).
COLUMNS = {
    "sft": [
        ("loss", "Loss", 8, lambda m: _num(m.get("loss"), ".4f")),
        ("eval_loss", "Eval loss", 9, lambda m: _num(m.get("eval_loss"), ".4f")),
        ("lr", "LR", 9, lambda m: _num(m.get("learning_rate"), ".2e")),
        ("grad_norm", "Grad norm", 9, lambda m: _num(m.get("grad_norm"), ".4f")),
    ],
    # Seven wide: "-0.2000" fits, and the whole KTO row fits beside the curves at 120 columns.
    "kto": [
        ("loss", "Loss", 7, lambda m: _num(m.get("loss"), ".4f")),
        ("kl", "KL", 7, lambda m: _num(m.get("kl"), ".4f")),
        ("margin", "Margin", 7, lambda m: _num(m.get("rewards/margins"), ".4f")),
        ("score", "Score", 7, kto_score_cell),
        ("chosen", "Chosen", 7, lambda m: _num(m.get("rewards/chosen"), ".4f")),
        ("rejected", "Reject", 7, lambda m: _num(m.get("rewards/rejected"), ".4f")),
    ],
}


def _sort_value(cell: Any) -> tuple[int, float | str]:
    text = str(cell)
    if text.startswith("checkpoint-"):  # by step, not by text: checkpoint-5 before checkpoint-10
        text = text.removeprefix("checkpoint-")
    elif text in ("final", "final_model"):
        return (0, math.inf)
    try:
        return (0, float(text))
    except ValueError:
        return (1, text) if text else (2, "")


class CheckpointTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="checkpoints.down"),
        Binding("k", "cursor_up", "Up", show=False, id="checkpoints.up"),
        Binding("s", "sort_next", "Sort", id="checkpoints.sort"),
        Binding("S", "sort_reverse", "Reverse sort", show=False, id="checkpoints.reverse"),
    ]

    def __init__(self, method: str, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.method = method if method in COLUMNS else "sft"
        self.columns_spec = COLUMNS[self.method]
        self.rows_by_name: dict[str, tuple[str, ...]] = {}
        self.best: str | None = None
        self.sort_keys = ["step", "checkpoint"] + [key for key, *_ in self.columns_spec]
        self.sort_index = 0
        self.sort_reversed = False

    def on_mount(self) -> None:
        self.add_column("", key="best", width=1)
        self.add_column("Checkpoint", key="checkpoint", width=16)
        self.add_column("Step", key="step", width=5)
        for key, label, width, _ in self.columns_spec:
            self.add_column(label, key=key, width=width)

    def cells(self, row: CheckpointRow) -> tuple[str, ...]:
        step = row.step if row.step is not None else row.metrics.get("step", "")
        mark = BEST if row.name == self.best else "" if row.healthy else DIVERGED
        return (mark, row.name, str(step),
                *(cell(row.metrics) for _, _, _, cell in self.columns_spec))

    def show(self, rows: list[CheckpointRow], best: str | None) -> None:
        """Add new checkpoints (as one batch) and update changed cells in place."""
        self.best = best
        new = []
        changed = False
        for row in rows:
            cells = self.cells(row)
            old = self.rows_by_name.get(row.name)
            if old is None:
                new.append((row.name, cells))
            elif old != cells:
                changed = True
                keys = ["best", "checkpoint", "step"] + [key for key, *_ in self.columns_spec]
                for key, before, after in zip(keys, old, cells):
                    if before != after:
                        self.update_cell(row.name, key, after)
            self.rows_by_name[row.name] = cells
        for name, cells in new:
            self.add_row(*cells, key=name)
        gone = set(self.rows_by_name) - {row.name for row in rows}
        for name in gone:  # rotated away by save_total_limit
            self.remove_row(name)
            del self.rows_by_name[name]
        # Rows come in step order; any other order (or a changed cell in the sorted column) is kept up.
        if (new or changed) and (self.sort_index or self.sort_reversed):
            self._sort()

    @property
    def highlighted(self) -> str | None:
        if not self.row_count:
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    def action_jump_best(self) -> None:
        if self.best in self.rows_by_name:
            self.move_cursor(row=self.get_row_index(self.best))

    def _sort(self) -> None:
        self.sort(self.sort_keys[self.sort_index], key=_sort_value, reverse=self.sort_reversed)

    @property
    def sort_label(self) -> str:
        key = self.sort_keys[self.sort_index]
        label = next((label for k, label, *_ in self.columns_spec if k == key), key.capitalize())
        return label + (" (descending)" if self.sort_reversed else "")

    def action_sort_next(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(self.sort_keys)
        self._sort()
        self.notify(f"Sorted by {self.sort_label}", timeout=1.5)

    def action_sort_reverse(self) -> None:
        self.sort_reversed = not self.sort_reversed
        self._sort()
        self.notify(f"Sorted by {self.sort_label}", timeout=1.5)
