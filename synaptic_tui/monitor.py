"""What the run view knows about a run's metrics, kept in bounded memory however long the run.

Curves are decimated series (at most a few thousand points each); checkpoint
rows need "the metrics at or nearest before step N", so a merged snapshot is
kept for every step a checkpoint is saved at: the multiples of save_steps and
the steps of the checkpoints on disk (a cancel-time checkpoint, a legacy run),
taken as the records pass those steps whether or not a record lands exactly
on them; the last few hundred records are kept as logged besides, for a
checkpoint that appears at a step nobody announced. A million-line metrics
file costs a few hundred kilobytes here, not a copy of its text.
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
        self.watched: set[int] = set()  # checkpoint steps seen on disk; they outlive a rewritten file
        self._checkpoints_known = False  # until then every save step's snapshot is kept
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
        self._step = 0  # the step of the last record (last_step is the highest)
        self.records = 0

    def set_checkpoints(self, steps: Iterable[int | None]) -> None:
        """The checkpoint steps now on disk (call before adding records). Their metrics are kept exactly;
        snapshots of checkpoints rotated away by save_total_limit are dropped once the recent window has
        passed them, so a long run keeps a handful of snapshots, not one per save."""
        self.watched = {s for s in steps if isinstance(s, int)}
        self._checkpoints_known = True
        self._prune()

    def _prune(self) -> None:
        if self.recent and self._checkpoints_known:
            oldest = self.recent[0][0]
            for stale in [s for s in self.saved if s < oldest and s not in self.watched]:
                del self.saved[stale]

    def _is_save_step(self, step: int) -> bool:
        return step in self.watched or bool(self.save_steps and step % self.save_steps == 0)

    def _passed(self, before: int, after: int) -> list[int]:
        """Save steps in [before, after): crossed by a jump from a record at `before` to one at `after`."""
        passed = [s for s in self.watched if before <= s < after]
        if self.save_steps:
            first = -(-before // self.save_steps) * self.save_steps
            passed += range(first, after, self.save_steps)
        return passed

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            step = record.get("step")
            if not isinstance(step, int):
                continue
            if self.records and step > self._step:
                # Logging every k steps skips save steps: what was logged last is their "nearest before".
                for passed in self._passed(self._step + 1, step):
                    self.saved[passed] = dict(self.latest)
            self.records += 1
            self._step = step
            self.latest.update(record)
            self.last_step = max(self.last_step, step)
            for key, series in self.series.items():
                value = record.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    series.add(step, float(value))
            if self._is_save_step(step):
                self.saved[step] = dict(self.latest)
            self.recent.append((step, record))
            if len(self.recent) > RECENT_SNAPSHOTS:
                self.window_base.update(self.recent.popleft()[1])
                if self.records % RECENT_SNAPSHOTS == 0:
                    # Reading a long backlog: snapshots of checkpoints long rotated away go as it passes.
                    self._prune()

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

    def steps_per_second(self, window: int = 20) -> float | None:
        """Training speed over the last `window` timed records: a pause (cancel, then resume hours later)
        leaves the rate once the window has moved past it, unlike an average over the whole run."""
        timed = [(step, r["time"]) for step, r in list(self.recent)[-window:]
                 if isinstance(r.get("time"), (int, float))]
        if len(timed) < 2 or timed[-1][1] <= timed[0][1] or timed[-1][0] <= timed[0][0]:
            return None
        return (timed[-1][0] - timed[0][0]) / (timed[-1][1] - timed[0][1])

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
