"""The live run view, driven while a fake trainer appends to the run directory (the contract, written by hand)."""

from __future__ import annotations

import json

from conftest import write_checkpoint_files, write_run
from textual.widgets import Log, Static

from synaptic_tui.app import SynapticApp
from synaptic_tui.screens.run_view import RunScreen
from synaptic_tui.services import Services
from synaptic_tui.widgets.checkpoint_table import BEST, CheckpointTable
from synaptic_tui.widgets.curves import Curves


def append(path, *records, raw: str = "") -> None:
    with open(path, "a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in records) + raw)


async def open_run(app, pilot, run_dir):
    app.show_run(run_dir)
    await pilot.pause(0.1)
    assert isinstance(app.screen, RunScreen)
    return app.screen


async def settle(pilot, predicate, timeout=5.0):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError("the view did not catch up")


def column(table: CheckpointTable, key: str) -> list[str]:
    """A column's cells top to bottom, as shown (sorted, if the table is)."""
    from textual.coordinate import Coordinate

    index = table.get_column_index(key)
    return [table.get_cell_at(Coordinate(row, index)) for row in range(table.row_count)]


async def test_kto_rows_best_marker_curves_and_log_follow_the_files(runs_dir):
    run_dir = write_run(runs_dir, "20261122-100000-kto-live",
                        status={"state": "running", "step": 0, "max_steps": 30, "engine": "transformers"},
                        config={"method": "kto", "training": {"save_steps": 10}})
    metrics, log_path = run_dir / "metrics.jsonl", run_dir / "train.log"
    app = SynapticApp(Services.create(runs_dir, refresh_seconds=0.1))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_run(app, pilot, run_dir)
        table = screen.query_one(CheckpointTable)
        assert table.row_count == 0
        append(metrics, *({"step": s, "time": 1000.0 + s, "loss": 0.5 - s / 100, "kl": 0.0,
                           "rewards/margins": s / 100} for s in range(1, 11)))
        (run_dir / "checkpoints" / "checkpoint-10").mkdir(parents=True)
        await settle(pilot, lambda: table.row_count == 1)
        assert column(table, "score") == ["KL=0"] and column(table, "best") == [BEST]
        # KL grows: the ratio ranks now. Step 20 has the better margin/KL.
        append(metrics, *({"step": s, "time": 1000.0 + s, "loss": 0.4, "kl": 0.5, "rewards/margins": 0.2,
                           "rewards/chosen": 0.1} for s in range(11, 20)),
               {"step": 20, "time": 1020.0, "loss": 0.38, "kl": 0.25, "rewards/margins": 0.3, "rewards/rejected": -0.2})
        (run_dir / "checkpoints" / "checkpoint-20").mkdir()
        await settle(pilot, lambda: table.row_count == 2)
        assert column(table, "checkpoint") == ["checkpoint-10", "checkpoint-20"]
        assert column(table, "score") == ["KL=0", "1.200"]
        assert column(table, "best") == ["", BEST]
        assert column(table, "chosen") == ["", "0.1000"] and column(table, "rejected") == ["", "-0.2000"]
        curves = screen.query_one(Curves)
        assert screen.metrics.series["loss"].values[-1] == 0.38
        assert len(screen.metrics.series["kl"].values) == 20
        assert curves.query_one("#curve-kl").data[-1] == 0.25
        # The log pane: a torn line waits for its newline.
        append(log_path, raw="step 1 done\nstep 2 do")
        await settle(pilot, lambda: screen.query_one(Log).lines == ["step 1 done"])
        append(log_path, raw="ne\n")
        await settle(pilot, lambda: screen.query_one(Log).lines == ["step 1 done", "step 2 done"])
        # b jumps to the best checkpoint; the cursor starts on the first row.
        await pilot.press("k")
        await pilot.press("b")
        assert table.highlighted == "checkpoint-20"


async def test_sft_table_garbage_lines_and_a_rewritten_metrics_file(runs_dir):
    run_dir = write_run(runs_dir, "20261122-110000-sft-live", status={"state": "running", "max_steps": 20},
                        config={"training": {"save_steps": 5}})
    metrics = run_dir / "metrics.jsonl"
    app = SynapticApp(Services.create(runs_dir, refresh_seconds=0.1))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_run(app, pilot, run_dir)
        table = screen.query_one(CheckpointTable)
        append(metrics, {"step": 5, "loss": 2.0, "learning_rate": 1e-5, "grad_norm": 0.5},
               raw="this is not json\n")
        append(metrics, {"step": 5, "eval_loss": 2.5}, {"step": 10, "loss": 1.0, "learning_rate": 5e-6})
        for step in (5, 10):
            (run_dir / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True, exist_ok=True)
        (run_dir / "final").mkdir()
        await settle(pilot, lambda: table.row_count == 3)
        assert column(table, "checkpoint") == ["checkpoint-5", "checkpoint-10", "final"]
        assert column(table, "lr") == ["1.00e-05", "5.00e-06", "5.00e-06"]
        # An eval loss belongs to the step it was measured at: later rows leave it blank.
        assert column(table, "eval_loss") == ["2.5000", "", ""]
        assert screen.metrics_tail.skipped == 1
        # Eval loss ranks SFT checkpoints, compared only with other eval losses.
        assert column(table, "best") == [BEST, "", ""]
        # A resumed run that rewrote its metrics from scratch: the view starts over.
        metrics.write_text(json.dumps({"step": 5, "loss": 0.5}) + "\n")
        await settle(pilot, lambda: column(table, "loss")[0] == "0.5000")
        assert screen.metrics.records == 1


async def test_enter_on_a_checkpoint_opens_the_export_form_prefilled(runs_dir):
    from textual.widgets import Select

    from synaptic_tui.screens.upload import UploadScreen

    run_dir = write_run(runs_dir, "20261122-120000-sft-done", status={"state": "succeeded", "step": 10},
                        checkpoints=(5, 10), final=True, metrics=[{"step": 5, "loss": 2.0}, {"step": 10, "loss": 1.0}])
    app = SynapticApp(Services.create(runs_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_run(app, pilot, run_dir)
        table = screen.query_one(CheckpointTable)
        await settle(pilot, lambda: table.row_count == 3)
        table.move_cursor(row=0)  # checkpoint-5, not the best
        await pilot.press("enter")
        await pilot.pause(0.1)
        await pilot.press("enter")  # the first action: export
        await settle(pilot, lambda: isinstance(app.screen, UploadScreen))
        form = app.screen
        assert form.query_one("#upload-run", Select).value == str(run_dir)
        assert form.query_one("#upload-checkpoint", Select).value == "checkpoint-5"
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert app.screen is screen


async def test_the_state_line_shows_progress_rate_and_failure(runs_dir):
    run_dir = write_run(runs_dir, "20261122-130000-sft-failed",
                        status={"state": "failed", "step": 7, "max_steps": 40, "engine": "unsloth",
                                "started_at": "2026-11-22T13:00:00+00:00", "ended_at": "2026-11-22T13:02:05+00:00",
                                "error": "Traceback...\ntorch.OutOfMemoryError: CUDA out of memory"},
                        metrics=[{"step": 1, "time": 100.0, "loss": 1.0}, {"step": 7, "time": 103.0, "loss": 0.9}])
    app = SynapticApp(Services.create(runs_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_run(app, pilot, run_dir)
        screen.refresh_status()
        state = str(screen.query_one("#run-state", Static).render())
        assert "failed" in state and "engine unsloth" in state and "step 7/40" in state
        assert "elapsed 2m05s" in state and "2.00 steps/s" in state and "CUDA out of memory" in state


async def test_runs_screen_filters_deletes_and_refuses_what_cannot_be_done(sample_runs):
    from synaptic_tui.screens.runs import RunsScreen
    from synaptic_tui.widgets.runs_table import RunsTable

    app = SynapticApp(Services.create(sample_runs, refresh_seconds=0.1))
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("r")
        await pilot.pause(0.1)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one(RunsTable)

        def ids():
            return [table.get_row_at(i)[0] for i in range(table.row_count)]

        assert len(ids()) == 5
        await pilot.press("f", "f", "f", "f")  # queued -> running -> succeeded -> failed
        await settle(pilot, lambda: ids() == ["20261121-101000-kto-demo-model"])
        assert "state failed" in str(screen.query_one("#runs-title", Static).render())
        await pilot.press("c")  # not running: refused, nothing asked
        assert notes[-1] == "20261121-101000-kto-demo-model is not running."
        await pilot.press("f", "f", "f", "f", "m", "m")  # cancelled, unknown, unreadable, all; method kto
        await settle(pilot, lambda: ids() == ["20261121-101000-kto-demo-model", "kto_output_rtx3090/20251102_090000"])
        await pilot.press("down", "x")  # legacy: read-only
        assert notes[-1] == "Legacy Synaptic Tuner runs are read-only here."
        await pilot.press("up", "x")
        await pilot.pause(0.1)
        await pilot.press("n")  # the confirm: no
        await pilot.pause(0.1)
        assert (sample_runs / "20261121-101000-kto-demo-model").exists()
        await pilot.press("x", "y")
        await settle(pilot, lambda: ids() == ["kto_output_rtx3090/20251102_090000"])
        assert not (sample_runs / "20261121-101000-kto-demo-model").exists()
        assert notes[-1] == "Deleted 20261121-101000-kto-demo-model."


async def test_runs_screen_resume_relaunches_from_the_last_checkpoint(sample_runs):
    from synaptic_tui.jobs import read_launch
    from synaptic_tui.screens.runs import RunsScreen

    write_checkpoint_files(sample_runs / "20261122-080000-sft-qwen2.5-0.5b" / "checkpoints" / "checkpoint-35", 35)
    app = SynapticApp(Services.create(sample_runs, refresh_seconds=0.1))
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("r")
        await pilot.pause(0.1)
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("R", "y")  # the newest run: cancelled at step 35
        await pilot.pause(0.3)
    record = read_launch(sample_runs / "20261122-080000-sft-qwen2.5-0.5b")
    assert record is not None and record.command[-2:] == ["--resume-from", "checkpoint-35"]
    assert notes == ["20261122-080000-sft-qwen2.5-0.5b: resumed from checkpoint-35."]


async def test_sorting_by_any_column_stays_sorted_as_rows_come_and_change(runs_dir):
    run_dir = write_run(runs_dir, "20261122-140000-sft-sorted", status={"state": "running", "max_steps": 40},
                        config={"training": {"save_steps": 5}})
    metrics = run_dir / "metrics.jsonl"
    losses = {5: 2.0, 10: 1.0, 15: 3.0}
    append(metrics, *({"step": s, "loss": loss} for s, loss in losses.items()))
    for step in losses:
        (run_dir / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    app = SynapticApp(Services.create(runs_dir, refresh_seconds=0.1))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_run(app, pilot, run_dir)
        table = screen.query_one(CheckpointTable)
        await settle(pilot, lambda: table.row_count == 3)
        await pilot.press("s")  # step -> checkpoint name (by its number, not as text)
        assert column(table, "checkpoint") == ["checkpoint-5", "checkpoint-10", "checkpoint-15"]
        await pilot.press("s")  # -> loss
        assert column(table, "loss") == ["1.0000", "2.0000", "3.0000"]
        await pilot.press("S")  # descending
        assert column(table, "loss") == ["3.0000", "2.0000", "1.0000"]
        # A new checkpoint lands in its sorted place, not at the bottom.
        append(metrics, {"step": 20, "loss": 2.5})
        (run_dir / "checkpoints" / "checkpoint-20").mkdir()
        await settle(pilot, lambda: table.row_count == 4)
        assert column(table, "checkpoint") == ["checkpoint-15", "checkpoint-20", "checkpoint-5", "checkpoint-10"]
        # A changed cell (a later log at the checkpoint's step) moves its row too.
        append(metrics, {"step": 20, "loss": 0.5})
        await settle(pilot, lambda: column(table, "loss")[-1] == "0.5000")
        assert column(table, "checkpoint")[-1] == "checkpoint-20"


async def test_a_running_run_shows_its_recent_rate_and_eta(runs_dir):
    run_dir = write_run(runs_dir, "20261122-150000-sft-running",
                        status={"state": "running", "step": 30, "max_steps": 100, "engine": "transformers",
                                "started_at": "2026-11-22T15:00:00+00:00"},
                        # 1 step/s, then (after a cancel and a resume much later) 2 steps/s.
                        metrics=[{"step": s, "time": 100.0 + s} for s in range(1, 11)]
                        + [{"step": s, "time": 5000.0 + s / 2} for s in range(11, 31)])
    app = SynapticApp(Services.create(runs_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_run(app, pilot, run_dir)
        await settle(pilot, lambda: screen.metrics.records == 30)
        screen.refresh_status()
        state = str(screen.query_one("#run-state", Static).render())
        assert "running" in state and "2.00 steps/s" in state and "ETA 0m35s" in state


async def test_a_trainer_that_died_shows_failed_with_the_reason(runs_dir):
    import os
    import sys

    from synaptic_tui.jobs import launch_detached
    from synaptic_tui.screens.runs import RunsScreen
    from synaptic_tui.widgets.runs_table import RunsTable

    run_dir = write_run(runs_dir, "20261122-160000-sft-killed", status={"state": "running", "step": 3, "max_steps": 9})
    # A real process that exits without writing a final state, as a trainer killed with SIGKILL does.
    record = launch_detached([sys.executable, "-c", "pass"], run_dir, run_dir / "train.log", {})
    os.waitpid(record.pid, 0)
    app = SynapticApp(Services.create(runs_dir, refresh_seconds=0.1))
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("r")
        await pilot.pause(0.2)
        assert isinstance(app.screen, RunsScreen)
        table = app.screen.query_one(RunsTable)
        await settle(pilot, lambda: "failed" in str(table.get_row(run_dir.name)))
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(app.screen, RunScreen))
        app.screen.refresh_status()
        state = str(app.screen.query_one("#run-state", Static).render())
        assert "failed" in state and "trainer process vanished" in state


async def test_log_pane_stops_following_when_scrolled_up_and_starts_over_on_a_new_file(runs_dir):
    run_dir = write_run(runs_dir, "20261122-170000-sft-log", status={"state": "running", "max_steps": 9})
    log_path = run_dir / "train.log"
    log_path.write_text("".join(f"line {i}\n" for i in range(200)))
    app = SynapticApp(Services.create(runs_dir, refresh_seconds=0.1))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_run(app, pilot, run_dir)
        log = screen.query_one(Log)
        await settle(pilot, lambda: len(log.lines) == 200 and log.is_vertical_scroll_end)
        log.scroll_home(animate=False)
        await pilot.pause(0.05)
        append(log_path, raw="line 200\n")
        await settle(pilot, lambda: len(log.lines) == 201)
        assert log.scroll_y == 0  # the user is reading: the tail does not pull them down
        log.scroll_end(animate=False)
        await pilot.pause(0.05)
        append(log_path, raw="line 201\n")
        await settle(pilot, lambda: len(log.lines) == 202)
        await settle(pilot, lambda: log.is_vertical_scroll_end)
        # A resumed trainer (or log rotation) replaces the file: the pane starts over.
        replaced = run_dir / "train.log.new"
        replaced.write_text("resumed\n")
        replaced.replace(log_path)
        await settle(pilot, lambda: log.lines == ["resumed"])


async def test_keys_move_and_each_checkpoint_action_opens_its_screen(runs_dir):
    from synaptic_tui.screens.evaluate import EvaluateScreen
    from synaptic_tui.screens.upload import UploadScreen

    run_dir = write_run(runs_dir, "20261122-180000-sft-keys", status={"state": "succeeded", "step": 10},
                        checkpoints=(5, 10), final=True, metrics=[{"step": 5, "loss": 2.0}, {"step": 10, "loss": 1.0}])
    app = SynapticApp(Services.create(runs_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_run(app, pilot, run_dir)
        table = screen.query_one(CheckpointTable)
        await settle(pilot, lambda: table.row_count == 3)
        assert table.highlighted == "checkpoint-5"
        await pilot.press("j")
        assert table.highlighted == "checkpoint-10"
        await pilot.press("down", "k")
        assert table.highlighted == "checkpoint-10"
        await pilot.press("enter")
        await pilot.pause(0.1)
        await pilot.press("down", "down", "enter")  # Evaluate
        await settle(pilot, lambda: isinstance(app.screen, EvaluateScreen))
        note = str(app.screen.query_one("#eval-run", Static).render())
        assert f"filed under run {run_dir.name}, checkpoint-10" in note and "export it first" in note
        await pilot.press("escape")
        await pilot.pause(0.1)
        await pilot.press("enter")
        await pilot.pause(0.1)
        await pilot.press("down", "enter")  # Upload
        await settle(pilot, lambda: isinstance(app.screen, UploadScreen))
        assert app.screen.checkpoint == "checkpoint-10"


async def test_without_file_events_the_view_polls_fast(runs_dir, monkeypatch):
    import watchfiles

    def no_events(*args, **kwargs):
        raise OSError("inotify watch limit reached")

    monkeypatch.setattr(watchfiles, "awatch", no_events)
    run_dir = write_run(runs_dir, "20261122-190000-sft-poll", status={"state": "running", "max_steps": 9},
                        config={"training": {"save_steps": 1}})
    app = SynapticApp(Services.create(runs_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_run(app, pilot, run_dir)
        await settle(pilot, lambda: screen.poll_timer._interval == 0.05)
        table = screen.query_one(CheckpointTable)
        append(run_dir / "metrics.jsonl", {"step": 1, "loss": 1.5})
        (run_dir / "checkpoints" / "checkpoint-1").mkdir(parents=True)
        await settle(pilot, lambda: column(table, "loss") == ["1.5000"], timeout=1.0)
