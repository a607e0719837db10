"""What the run view knows about a run's metrics, kept in bounded memory however long the run, and
the one answer to "which checkpoint is best" that every surface asks (`rank_run`).

metrics.jsonl is untrusted input: a record counts only with a whole-number step in [0, MAX_STEP] that
does not go backwards, and only its numeric values are kept (NaN and infinity too, since they mark a
diverged run; curves and cells show only finite ones). A checkpoint row shows what was logged for its
own step: eval metrics only when logged at that very step (an eval loss from an earlier step says
nothing about these weights), training metrics from the latest record since the previous save point,
never from before it (logging every 3 steps never lands on step 10: checkpoint-10 shows step 9). A
snapshot is kept per save point (the multiples of save_steps and the checkpoints on disk) as the
records pass it, and the last few hundred records as logged, for a checkpoint that appears at a step
nobody announced. A million-line metrics file costs a few hundred kilobytes here, not a copy of its text.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from synaptic_tui.runs import MAX_STEP, Checkpoint, RunInfo
from synaptic_tui.scoring import HEALTH_KEYS, best_of, checkpoint_score, kto_margin

CURVES = {"sft": ("loss", "eval_loss"), "kto": ("loss", "kl", "rewards/margins")}
RECENT_SNAPSHOTS = 512  # records, not copies
MAX_KEYS = 64  # metrics per record; a line with thousands of keys is not a trainer's
MAX_KEY_LENGTH = 80


def _is_eval(key: str) -> bool:
    return key.startswith("eval_")


def clean_record(record: Any) -> dict[str, Any] | None:
    """The record's step and numeric values, or None when it has no usable step."""
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        return None
    out: dict[str, Any] = {"step": step}
    for key, value in record.items():
        if key == "step" or not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, int) and abs(value) > 2**53:
            continue  # not a metric, and too big to become a float
        out[key] = value
        if len(out) > MAX_KEYS:
            break
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    healthy: bool = True  # False: saved after the run diverged (a non-finite loss or grad norm)


class RunMetrics:
    def __init__(self, method: str, save_steps: int | None = None, max_points: int = 1000) -> None:
        self.method = method if method in CURVES else "sft"
        valid = isinstance(save_steps, int) and not isinstance(save_steps, bool) and 0 < save_steps <= MAX_STEP
        self.save_steps = save_steps if valid else None
        self.max_points = max_points
        self.watched: set[int] = set()  # checkpoint steps seen on disk; they outlive a rewritten file
        self._watched_sorted: list[int] = []
        self._checkpoints_known = False  # until then every save step's snapshot is kept
        self.reset()

    def reset(self) -> None:
        self.latest: dict[str, Any] = {}
        self.series = {key: Series(self.max_points) for key in CURVES[self.method]}
        self.saved: dict[int, dict[str, Any]] = {}
        self.recent: deque[tuple[int, dict[str, Any]]] = deque()
        self.window: dict[str, Any] = {}  # records since the last save point, before the current step
        self.current: dict[str, Any] = {}  # records at the current step
        self.current_step: int | None = None
        self.last_step = 0
        self.records = 0
        self.rejected = 0  # lines without a usable step, or with a step going backwards
        self.diverged_at: int | None = None  # first step with a non-finite loss or grad norm
        self.healthy_through: int | None = None  # the last step logged before that
        self._healthy_before: int | None = None

    # --- save points ------------------------------------------------------------------

    def set_checkpoints(self, steps: Iterable[int | None]) -> None:
        """The checkpoint steps now on disk (call before adding records). Their metrics are kept exactly;
        snapshots of checkpoints rotated away by save_total_limit are dropped once the recent window has
        passed them, so a long run keeps a handful of snapshots, not one per save."""
        watched = {s for s in steps if isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_STEP}
        added = watched - self.watched
        self.watched = watched
        self._watched_sorted = sorted(watched)
        self._checkpoints_known = True
        # A checkpoint that appeared after its records went by (a cancel-time save): kept from the recent window.
        for step in added:
            if step not in self.saved and self.current_step is not None and step <= self.current_step \
                    and (step == self.current_step or (self.recent and step >= self.recent[0][0])):
                self.saved[step] = self.metrics_at(step)
        self._prune()

    def _is_save_point(self, step: int) -> bool:
        return step in self.watched or bool(self.save_steps and step % self.save_steps == 0)

    def _next_save_point(self, after: int) -> int | None:
        points = []
        if self.save_steps:
            points.append((after // self.save_steps + 1) * self.save_steps)
        i = bisect.bisect_right(self._watched_sorted, after)
        if i < len(self._watched_sorted):
            points.append(self._watched_sorted[i])
        return min(points) if points else None

    def _previous_save_point(self, before: int) -> int:
        points = [-1]
        if self.save_steps and before > 0:
            points.append((before - 1) // self.save_steps * self.save_steps)
        i = bisect.bisect_left(self._watched_sorted, before)
        if i:
            points.append(self._watched_sorted[i - 1])
        return max(points)

    def _prune(self) -> None:
        if self.recent and self._checkpoints_known:
            oldest = self.recent[0][0]
            for stale in [s for s in self.saved if s < oldest and s not in self.watched]:
                del self.saved[stale]

    def _snapshot(self) -> dict[str, Any]:
        """The metrics of the current step: its own records over the training metrics since the last save point."""
        return {**{k: v for k, v in self.window.items() if not _is_eval(k)}, **self.current}

    def _close_step(self, next_step: int) -> None:
        """The current step is over: a record of `next_step` arrived."""
        if self.current_step is None:
            return
        if self._is_save_point(self.current_step):
            self.window = {}
            return
        self.window.update(self.current)
        # A save point between two logged steps (logging every 3, saving every 10): its nearest logged
        # training metrics are what was logged since the previous save point. O(1) however far the jump.
        crossed = self._next_save_point(self.current_step)
        if crossed is not None and crossed < next_step:
            self.saved[crossed] = {k: v for k, v in self.window.items() if not _is_eval(k)}
            self.window = {}

    # --- records --------------------------------------------------------------------------

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        for raw in records:
            record = clean_record(raw)
            if record is None or (self.current_step is not None and record["step"] < self.current_step):
                self.rejected += 1
                continue
            step = record["step"]
            if self.current_step is None or step > self.current_step:
                self._close_step(step)
                self.current_step, self.current = step, {}
                self._healthy_before = self.healthy_through
            self.current.update(record)
            self.records += 1
            self.latest.update(record)
            self.last_step = max(self.last_step, step)
            if self.diverged_at is None:
                if any(isinstance(record.get(k), float) and not math.isfinite(record[k]) for k in HEALTH_KEYS):
                    # An eval after a finite training log of the same step still condemns that step.
                    self.diverged_at, self.healthy_through = step, self._healthy_before
                else:
                    self.healthy_through = step
            for key, series in self.series.items():
                value = record.get(key)
                if _finite(value):
                    series.add(step, float(value))
            if self._is_save_point(step):
                self.saved[step] = self._snapshot()
            self.recent.append((step, record))
            if len(self.recent) > RECENT_SNAPSHOTS:
                self.recent.popleft()
                if self.records % RECENT_SNAPSHOTS == 0:
                    # Reading a long backlog: snapshots of checkpoints long rotated away go as it passes.
                    self._prune()

    def metrics_at(self, step: int | None) -> dict[str, Any]:
        """The metrics logged for `step` (None: the final adapter, saved at the last step), {} when none were."""
        if step is None or step == self.current_step:
            return self._snapshot() if self.current_step is not None else {}
        if step in self.saved:
            return self.saved[step]
        if not self.recent or step < self.recent[0][0] or self.current_step is None or step > self.current_step:
            return {}
        since = self._previous_save_point(step)
        merged: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for logged, record in self.recent:
            if since < logged < step:
                merged.update({k: v for k, v in record.items() if not _is_eval(k)})
            elif logged == step:
                own.update(record)
        return {**merged, **own}

    def steps_per_second(self, window: int = 20) -> float | None:
        """Training speed over the last `window` timed records since the last pause: a cancel, then a
        resume hours later, never counts the hours as training (the rate waits for two new records)."""
        timed = [(step, r["time"]) for step, r in list(self.recent)[-window:] if _finite(r.get("time"))]
        gaps = [later[1] - earlier[1] for earlier, later in zip(timed, timed[1:])]
        if len(gaps) >= 2:
            longest = max(range(len(gaps)), key=gaps.__getitem__)
            others = sorted(g for i, g in enumerate(gaps) if i != longest)
            if gaps[longest] > 10 * max(others[len(others) // 2], 1e-3):
                timed = timed[longest + 1:]
        if len(timed) < 2 or timed[-1][1] <= timed[0][1] or timed[-1][0] <= timed[0][0]:
            return None
        rate = (timed[-1][0] - timed[0][0]) / (timed[-1][1] - timed[0][1])
        return rate if math.isfinite(rate) and rate > 0 else None

    def healthy(self, step: int | None) -> bool:
        """False for a checkpoint saved after the run diverged (and for the final adapter of such a run)."""
        if self.diverged_at is None:
            return True
        return step is not None and self.healthy_through is not None and step <= self.healthy_through

    def checkpoint_rows(self, checkpoints: list[Checkpoint]) -> tuple[list[CheckpointRow], str | None]:
        """One row per checkpoint with its metrics and score, and the name of the best one."""
        rows = []
        for checkpoint in checkpoints:
            metrics = self.metrics_at(checkpoint.step)
            healthy = self.healthy(checkpoint.step)
            rows.append(CheckpointRow(checkpoint.name, checkpoint.step, metrics,
                                      checkpoint_score(self.method, metrics) if healthy else None, healthy))
        numbered = {row.step for row in rows if row.step is not None}
        # The final adapter is the last step's weights: where a checkpoint holds that step too, the
        # checkpoint is the one named (it also resumes).
        candidates = [(row.name, row.metrics) for row in rows
                      if row.healthy and row.metrics and not (row.step is None and self.last_step in numbered)]
        return rows, best_of(self.method, candidates)


@dataclass
class RankedRun:
    rows: list[CheckpointRow]
    best: str | None
    diverged_at: int | None
    metrics: RunMetrics

    def score_of(self, name: str | None) -> dict[str, Any] | None:
        """What ranked a checkpoint, for lists of runs: {"metric": "eval_loss", "value": 0.41}."""
        from synaptic_tui.scoring import ranking_metric

        row = next((r for r in self.rows if r.name == name), None)
        ranked = ranking_metric(self.metrics.method, row.metrics) if row is not None else None
        return {"metric": ranked[0], "value": round(ranked[1], 6)} if ranked else None


def rank_checkpoints(method: str, checkpoints: list[Checkpoint], records: Iterable[dict[str, Any]],
                     save_steps: int | None = None) -> RankedRun:
    """Rows and the best checkpoint from the checkpoints on disk and every metrics record."""
    metrics = RunMetrics(method, save_steps)
    metrics.set_checkpoints(c.step for c in checkpoints)
    metrics.add(records)
    rows, best = metrics.checkpoint_rows(checkpoints)
    return RankedRun(rows, best, metrics.diverged_at, metrics)


def rank_run(run: RunInfo) -> RankedRun:
    """The run's checkpoints ranked as the run view ranks them: the one "best" every surface names
    (run view, runs show, export and upload, the model card, the pipeline's select stage)."""
    from synaptic_tui.follow import JsonlFollower
    from synaptic_tui.runs import read_run_config

    save_steps = None
    if not run.legacy:
        training = read_run_config(run.path).get("training")
        save_steps = training.get("save_steps") if isinstance(training, dict) else None
    path: Path | None = run.metrics_path
    records = JsonlFollower(path).read_all() if path is not None else []
    return rank_checkpoints(run.method, run.checkpoints(), records, save_steps)


def kto_score_cell(metrics: dict[str, Any]) -> str:
    score = checkpoint_score("kto", metrics)
    if score is not None:
        return f"{score:.3f}"
    margin = kto_margin(metrics)
    return "KL=0" if margin is not None else ""
