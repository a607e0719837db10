"""What the run view knows about a run's metrics, kept in bounded memory however long the run.

Curves are decimated series (at most a few thousand points each); checkpoint
rows need "the metrics at or nearest before step N", so a merged snapshot is
kept for every save step (and for the last few hundred steps, in case a
checkpoint shows up at a step we did not expect). A million-line metrics file
costs a few hundred kilobytes here, not a copy of its text.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from synaptic_tui.runs import Checkpoint
from synaptic_tui.scoring import best_step, checkpoint_score, kto_margin

CURVES = {"sft": ("loss", "eval_loss"), "kto": ("loss", "kl", "rewards/margins")}
RECENT_SNAPSHOTS = 512  # records, not copies


@dataclass
class Series:
    """(step, value) points, halved whenever they pass 2 x max_points, so memory stays flat."""

    max_points: int = 1000
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    stride: int = 1
    _seen: int = 0

    def add(self, step: int, value: float) -> None:
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        self.steps.append(step)
        self.values.append(value)
        if len(self.values) > 2 * self.max_points:
            self.steps, self.values = self.steps[::2], self.values[::2]
            self.stride *= 2


@dataclass
class CheckpointRow:
    name: str
    step: int | None
    metrics: dict[str, Any]
    score: float | None


class RunMetrics:
    def __init__(self, method: str, save_steps: int | None = None, max_points: int = 1000) -> None:
        self.method = method if method in CURVES else "sft"
        self.save_steps = save_steps
        self.max_points = max_points
        self.reset()

    def reset(self) -> None:
        self.latest: dict[str, Any] = {}
        self.series = {key: Series(self.max_points) for key in CURVES[self.method]}
        self.saved: dict[int, dict[str, Any]] = {}
        # The last records as logged, and everything older merged: any recent step's
        # metrics can be rebuilt exactly without copying a snapshot per record.
        self.recent: deque[tuple[int, dict[str, Any]]] = deque()
        self.window_base: dict[str, Any] = {}
        self.last_step = 0
        self.records = 0

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            step = record.get("step")
            if not isinstance(step, int):
                continue
            self.records += 1
            self.latest.update(record)
            self.last_step = max(self.last_step, step)
            for key, series in self.series.items():
                value = record.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    series.add(step, float(value))
            if self.save_steps and step % self.save_steps == 0:
                self.saved[step] = dict(self.latest)
            self.recent.append((step, record))
            if len(self.recent) > RECENT_SNAPSHOTS:
                self.window_base.update(self.recent.popleft()[1])

    def metrics_at(self, step: int | None) -> dict[str, Any]:
        """Metrics logged at or nearest before `step` (None: the final adapter, i.e. the latest)."""
        if step is None:
            return dict(self.latest)
        if step in self.saved and (not self.recent or step < self.recent[0][0]):
            return self.saved[step]
        if self.recent and step >= self.recent[0][0]:
            merged = dict(self.window_base)
            for logged, record in self.recent:
                if logged <= step:
                    merged.update(record)
            return merged
        earlier = [s for s in self.saved if s <= step]
        return self.saved[max(earlier)] if earlier else {}

    def checkpoint_rows(self, checkpoints: list[Checkpoint]) -> tuple[list[CheckpointRow], str | None]:
        """One row per checkpoint with its metrics and score, and the name of the best one."""
        rows = []
        for checkpoint in checkpoints:
            metrics = self.metrics_at(checkpoint.step)
            rows.append(CheckpointRow(checkpoint.name, checkpoint.step, metrics,
                                      checkpoint_score(self.method, metrics)))
        scored = {i: row.metrics for i, row in enumerate(rows)}
        best = best_step(self.method, scored)
        return rows, rows[best].name if best is not None else None


def kto_score_cell(metrics: dict[str, Any]) -> str:
    score = checkpoint_score("kto", metrics)
    if score is not None:
        return f"{score:.3f}"
    margin = kto_margin(metrics)
    return "KL=0" if margin is not None else ""
