"""Following files as a trainer writes them: torn lines, garbage, truncation, replacement, late creation."""

from __future__ import annotations

import json
import os

from synaptic_tui.follow import FileFollower, JsonlFollower


def append(path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def test_reads_only_complete_new_lines(tmp_path):
    path = tmp_path / "train.log"
    follower = FileFollower(path)
    assert follower.poll().lines == []  # not there yet
    append(path, "one\ntwo\nthr")
    assert follower.poll().lines == ["one", "two"]
    assert follower.poll().lines == []
    append(path, "ee\r\nfour\n")
    assert follower.poll().lines == ["three", "four"]
    assert follower.offset == path.stat().st_size


def test_jsonl_skips_and_counts_garbage_and_keeps_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    follower = JsonlFollower(path)
    append(path, '{"step": 1, "loss": 2.0}\nnot json\n[1, 2]\n\n{"step": 2, "lo')
    records, reset, more = follower.poll_records()
    assert records == [{"step": 1, "loss": 2.0}] and not reset and not more
    assert follower.skipped == 2
    append(path, 'ss": 1.5}\n')
    assert follower.poll_records()[0] == [{"step": 2, "loss": 1.5}]


def test_truncation_starts_over_and_says_so(tmp_path):
    path = tmp_path / "metrics.jsonl"
    follower = JsonlFollower(path)
    append(path, "".join(json.dumps({"step": i}) + "\n" for i in range(1, 6)))
    assert len(follower.poll_records()[0]) == 5
    path.write_text(json.dumps({"step": 1, "again": True}) + "\n")
    records, reset, _ = follower.poll_records()
    assert reset and records == [{"step": 1, "again": True}]


def test_replacement_by_rename_is_noticed_even_when_bigger(tmp_path):
    path = tmp_path / "train.log"
    follower = FileFollower(path)
    append(path, "old 1\nold 2\n")
    assert follower.poll().lines == ["old 1", "old 2"]
    fresh = tmp_path / "train.log.new"
    fresh.write_text("new 1\nnew 2\nnew 3\nnew 4\n")
    os.replace(fresh, path)  # log rotation: a new file under the same name
    update = follower.poll()
    assert update.reset and update.lines == ["new 1", "new 2", "new 3", "new 4"]


def test_large_file_then_small_append_reads_only_the_append(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(50_000)))
    follower = JsonlFollower(path)
    first, _, more = follower.poll_records(max_bytes=100_000)
    assert more and 0 < len(first) < 50_000, "a big backlog comes a chunk at a time"
    assert len(first) + len(follower.read_all()) == 50_000
    before = follower.offset
    append(path, json.dumps({"step": 50_000, "loss": 0.5}) + "\n")
    records, _, _ = follower.poll_records()
    assert records == [{"step": 50_000, "loss": 0.5}]
    assert follower.offset - before == len(json.dumps({"step": 50_000, "loss": 0.5})) + 1


def test_run_metrics_stay_bounded_and_exact_at_checkpoints():
    from synaptic_tui.monitor import RunMetrics
    from synaptic_tui.runs import Checkpoint

    metrics = RunMetrics("kto", save_steps=100, max_points=50)
    records = []
    for step in range(1, 5001):
        record = {"step": step, "loss": 1.0 / step, "kl": 0.1, "rewards/margins": step / 1000}
        if step % 7 == 0:
            record["rewards/chosen"] = step  # only on some lines, as KTO logs it
        records.append(record)
    metrics.add(records)
    assert len(metrics.series["loss"].values) <= 100 and metrics.series["loss"].steps[0] == 1
    assert len(metrics.saved) == 50 and len(metrics.recent) == 512
    # At a save step, far back: the saved snapshot, with the last chosen seen before it.
    assert metrics.metrics_at(700) == {"step": 700, "loss": 1 / 700, "kl": 0.1, "rewards/margins": 0.7,
                                       "rewards/chosen": 700}
    # An unexpected checkpoint step inside the recent window (a cancel) is exact too.
    assert metrics.metrics_at(4999)["rewards/chosen"] == 4998 and metrics.metrics_at(4999)["loss"] == 1 / 4999
    # A step nobody said would be a checkpoint, far behind the window: nothing, rather than another
    # step's metrics (the view never asks: it watches the steps of the checkpoints on disk, below).
    assert metrics.metrics_at(650) == {}
    rows, best = metrics.checkpoint_rows([Checkpoint("checkpoint-700", None, 700),
                                          Checkpoint("checkpoint-4999", None, 4999)])
    assert [round(r.score, 3) for r in rows] == [7.0, 49.99] and best == "checkpoint-4999"


def test_checkpoints_off_the_logging_grid_and_off_the_save_grid_are_exact():
    from synaptic_tui.monitor import RunMetrics

    # Logged every 3 steps, saved every 10: no record lands on 10, 20, ...; a cancel saved at 1234
    # and a resume went on; the view told the metrics about checkpoint-1234 before the backlog came.
    metrics = RunMetrics("sft", save_steps=10)
    metrics.set_checkpoints([1234, None])
    metrics.add({"step": s, "loss": s / 10_000, "learning_rate": 1e-4} for s in range(3, 3000, 3))
    assert metrics.metrics_at(10)["step"] == 9 and metrics.metrics_at(20)["step"] == 18
    assert metrics.metrics_at(1234) == {"step": 1233, "loss": 0.1233, "learning_rate": 1e-4}
    # A legacy run has no save_steps at all: the checkpoints on disk are what is watched.
    legacy = RunMetrics("sft")
    legacy.set_checkpoints([500])
    legacy.add({"step": s, "loss": float(s)} for s in range(1, 3000))
    assert legacy.metrics_at(500) == {"step": 500, "loss": 500.0} and len(legacy.saved) == 1
    # Checkpoints rotated away by save_total_limit: their snapshots go once the window is past them.
    metrics.set_checkpoints([1234, 2990])
    first_kept = -(-metrics.recent[0][0] // 10) * 10  # the first save step inside the 512-record window
    assert sorted(metrics.saved) == [1234, *range(first_kept, 3000, 10)]


def test_steps_per_second_follows_the_recent_pace_not_the_whole_run():
    from synaptic_tui.monitor import RunMetrics

    metrics = RunMetrics("sft")
    metrics.add({"step": s, "time": 100.0 + s} for s in range(1, 51))  # 1 step/s
    assert metrics.steps_per_second() == 1.0
    # Cancelled at 50, resumed an hour later at 4 steps/s: the pause is never counted as training.
    metrics.add([{"step": 51, "time": 3750.25}])
    assert metrics.steps_per_second() is None  # one record since the pause: no rate yet, not 0.0003
    metrics.add({"step": 51 + s, "time": 3750.25 + s / 4} for s in range(1, 5))
    assert metrics.steps_per_second() == 4.0
    metrics.add({"step": 55 + s, "time": 3751.25 + s / 4} for s in range(1, 41))
    assert metrics.steps_per_second() == 4.0


def test_a_long_backlog_keeps_only_the_snapshots_of_checkpoints_on_disk():
    from synaptic_tui.monitor import RunMetrics

    # Reopening a long run: save_steps 10 over 100k steps, save_total_limit kept three checkpoints.
    metrics = RunMetrics("sft", save_steps=10)
    metrics.set_checkpoints([99_980, 99_990, 100_000])
    metrics.add({"step": s, "loss": 1.0 / s} for s in range(1, 100_001))
    # The three on disk, and the save steps of the last two 512-record windows (pruned once per
    # window): about a hundred snapshots, not ten thousand.
    assert len(metrics.saved) <= 3 + 2 * 512 // 10 + 1
    assert metrics.metrics_at(99_980)["loss"] == 1.0 / 99_980
