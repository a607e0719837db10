"""The TUI shell driven with Pilot: home screen, navigation, help, palette, live run list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLES, REPO, write_run
from textual.widgets import DataTable, Static

from synaptic_tui.app import ACTIONS, SynapticApp
from synaptic_tui.doctor import Check
from synaptic_tui.screens.upload import UploadScreen
from synaptic_tui.screens.new_run import NewRunScreen
from synaptic_tui.screens.doctor import DoctorScreen
from synaptic_tui.screens.evaluate import EvaluateScreen
from synaptic_tui.screens.help import HelpScreen
from synaptic_tui.screens.home import HomeScreen
from synaptic_tui.screens.pipelines import PipelinesScreen
from synaptic_tui.screens.runs import RunsScreen
from synaptic_tui.services import Services
from synaptic_tui.widgets.runs_table import RunsTable


def make_app(runs_dir, **kwargs) -> SynapticApp:
    return SynapticApp(Services.create(runs_dir, refresh_seconds=0.1, **kwargs))


def table_ids(table: DataTable) -> list[str]:
    return [table.get_row_at(i)[0] for i in range(table.row_count)]


async def test_home_lists_recent_runs_newest_first(sample_runs):
    app = make_app(sample_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, HomeScreen)
        table = app.screen.query_one(RunsTable)
        assert table_ids(table) == [
            "20261122-080000-sft-qwen2.5-0.5b",
            "20261121-101000-kto-demo-model",
            "20261120-091500-sft-demo-model",
            "kto_output_rtx3090/20251102_090000",
            "sft_output_rtx3090/20251101_120000",
        ]
        row = table.get_row("20261121-101000-kto-demo-model")
        assert row[1:6] == ["kto", "transformers", "demo-model", "failed", "12/40"]
        assert app.screen.query_one("#no-runs").display is False


async def test_home_empty_state_names_the_runs_dir(runs_dir, monkeypatch):
    monkeypatch.chdir(runs_dir.parent)
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        note = app.screen.query_one("#no-runs", Static)
        assert note.display is True
        assert "No runs yet in runs" in str(note.render())


async def test_home_picks_up_new_runs_live(runs_dir):
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        table = app.screen.query_one(RunsTable)
        assert table.row_count == 0
        write_run(runs_dir, "20261122-120000-sft-live", status={"state": "running", "step": 3, "max_steps": 10})
        no_runs = app.screen.query_one("#no-runs")
        for _ in range(100):  # the empty-state note follows the table by one message
            await pilot.pause(0.05)
            if table.row_count and not no_runs.display:
                break
        assert table_ids(table) == ["20261122-120000-sft-live"]
        assert table.get_row("20261122-120000-sft-live")[4:6] == ["running", "3/10"]
        assert no_runs.display is False


async def test_action_keys_open_their_screens_and_escape_returns(sample_runs):
    from synaptic_tui.screens.chat import ChatScreen
    from synaptic_tui.screens.servers import ServersScreen

    expected = {"n": NewRunScreen, "r": RunsScreen, "u": UploadScreen, "e": EvaluateScreen, "c": ChatScreen,
                "s": ServersScreen, "d": DoctorScreen, "p": PipelinesScreen}
    assert set(expected) == {a.key for a in ACTIONS}

    async def doctor(runs_dir):
        return []

    app = make_app(sample_runs, doctor=doctor)
    async with app.run_test(size=(120, 40)) as pilot:
        for key, screen_type in expected.items():
            await pilot.press(key)
            await pilot.pause()
            assert type(app.screen) is screen_type, key
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, HomeScreen)


async def test_new_run_shows_the_embedded_default_config(runs_dir):
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        await pilot.pause()
        text = str(app.screen.query_one("#resolved", Static).render())
        assert "method: sft" in text and "learning_rate" in text and "sft_tool_calls.jsonl" in text


async def test_help_opens_with_f1_and_question_mark(runs_dir):
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        for key in ("f1", "question_mark"):
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, HomeScreen)


async def test_help_lists_the_keys_of_the_screen_underneath(sample_runs):
    app = make_app(sample_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        this_screen = dict(app.screen.screen_keys)
        # The runs screen's own keys, not the help screen's "Close".
        assert this_screen.get("c") == "Cancel" and this_screen.get("x") == "Delete"
        assert "Close" not in this_screen.values()


async def test_command_palette_lists_every_action(runs_dir):
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for action in ACTIONS:
            assert any(t.startswith(action.title) for t in titles), action.title
        # And the palette really runs them: open it, search, pick.
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Doctor")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DoctorScreen)


async def test_q_quits(runs_dir):
    app = make_app(runs_dir)
    async with app.run_test() as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_doctor_screen_shows_checks(runs_dir):
    calls = []

    async def doctor(path):
        calls.append(path)
        return [Check("Python", "ok", "3.11.7", {}), Check("CUDA", "info", "no NVIDIA GPU", {}),
                Check("HF token", "warn", "not set", {})]

    app = make_app(runs_dir, doctor=doctor)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("d")
        await app.workers.wait_for_complete()
        await pilot.pause()
        table = app.screen.query_one("#checks", DataTable)
        assert [table.get_row_at(i)[0] for i in range(table.row_count)] == ["Python", "CUDA", "HF token"]
        assert "1 need attention" in str(app.screen.query_one("#doctor-state", Static).render())
        await pilot.press("r")
        await app.workers.wait_for_complete()
        assert calls == [runs_dir, runs_dir]


async def test_doctor_failure_is_shown_not_fatal(runs_dir):
    async def doctor(path):
        raise RuntimeError("nvidia-smi hung")

    app = make_app(runs_dir, doctor=doctor)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("d")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "nvidia-smi hung" in str(app.screen.query_one("#doctor-state", Static).render())
        assert app.is_running


async def test_runs_screen_enter_opens_the_run(sample_runs):
    from synaptic_tui.screens.run_view import RunScreen

    app = make_app(sample_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("down", "enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, RunScreen)
        assert app.screen.run_dir.name == "20261121-101000-kto-demo-model"
        state = str(app.screen.query_one("#run-state", Static).render())
        assert "failed" in state and "step 12/40" in state and "CUDA out of memory" in state


def test_tui_process_imports_no_ml_library():
    """The app and every screen import without torch & co (checked in a clean interpreter)."""
    code = (
        "import sys, synaptic_tui.app, synaptic_tui.cli, synaptic_tui.runs, synaptic_tui.config, "
        "synaptic_tui.doctor, synaptic_tui.screens.home, synaptic_tui.screens.runs, synaptic_tui.screens.doctor, "
        "synaptic_tui.screens.upload, synaptic_tui.exporting, synaptic_tui.upload, synaptic_tui.modelcard, "
        "synaptic_tui.screens.evaluate, synaptic_tui.screens.pipelines, synaptic_tui.screens.help, synaptic_tui.screens.compare, "
        "synaptic_tui.screens.run_view, synaptic_tui.screens.new_run, trainers.demo_model\n"
        "bad = [m for m in ('torch','transformers','trl','peft','unsloth','mlx','datasets','accelerate') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


async def wait_until(pilot, predicate, timeout: float = 60.0):
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError("timed out waiting for the screen")


async def test_new_run_preflight_then_launch_opens_the_live_run(runs_dir, demo_model, tmp_path, monkeypatch):
    from synaptic_tui.paths import demo_model_dir
    from synaptic_tui.runs import read_status
    from synaptic_tui.screens.new_run import NewRunScreen
    from synaptic_tui.screens.run_view import RunScreen

    assert demo_model_dir() == demo_model  # conftest points the cache at the session's demo model
    (tmp_path / "configs").mkdir()
    quick = tmp_path / "configs" / "quick.yaml"
    quick.write_text((EXAMPLES / "configs" / "sft.yaml").read_text().replace("max_steps: 30", "max_steps: 2")
                     .replace("../data/", str(EXAMPLES / "data") + "/").replace("../prompts/", str(EXAMPLES / "prompts") + "/"))
    monkeypatch.chdir(tmp_path)
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        screen.query_one("#config").value = str(quick.resolve())
        # Pre-flight counts tokens in a subprocess that imports transformers: slow on a 2-core CI box.
        await wait_until(pilot, lambda: screen.report is not None and screen.config["training"]["max_steps"] == 2,
                         timeout=240)
        report = str(screen.query_one("#preflight-report", Static).render())
        assert "ready: press l to launch" in report
        assert f"{json.loads((demo_model / 'synaptic_demo.json').read_text())['parameters']:,} parameters" in report
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen))
        run_dir = app.screen.run_dir
        await wait_until(pilot, lambda: (s := read_status(run_dir)) is not None and s.finished, timeout=120)
        await pilot.pause(0.6)
        assert read_status(run_dir).state == "succeeded"
        state = str(app.screen.query_one("#run-state", Static).render())
        assert "succeeded" in state and "step 2/2" in state
        assert any("run succeeded" in line for line in app.screen.query_one("#run-log").lines)


async def test_new_run_shows_config_errors_and_refuses_to_launch(runs_dir, tmp_path, monkeypatch):
    from synaptic_tui.screens.new_run import NewRunScreen

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "broken.yaml").write_text("training:\n  learning_rate: -1\n")
    monkeypatch.chdir(tmp_path)
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        select = screen.query_one("#config")
        select.value = str((tmp_path / "configs" / "broken.yaml").resolve())
        await pilot.pause(0.2)
        report = str(screen.query_one("#preflight-report", Static).render())
        assert "broken.yaml:2 training.learning_rate: must be > 0" in report
        await pilot.press("l")
        await pilot.pause()
        assert isinstance(app.screen, NewRunScreen)
        assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


async def test_kto_on_mlx_is_explained(runs_dir):
    from textual.widgets import RadioSet

    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        screen = app.screen
        screen.query_one("#platform", RadioSet).query("RadioButton")[2].value = True
        screen.query_one("#method", RadioSet).query("RadioButton")[1].value = True
        await pilot.pause(0.3)
        note = str(screen.query_one("#platform-note", Static).render())
        assert "KTO is not offered on MLX" in note
        report = str(screen.query_one("#preflight-report", Static).render())
        assert "mlx-lm has no KTO trainer" in report


async def test_new_run_takes_platform_and_method_from_the_config_and_what_doctor_found(runs_dir, tmp_path,
                                                                                       monkeypatch):
    from textual.widgets import RadioSet

    from synaptic_tui.preflight import PreflightReport
    from synaptic_tui.screens.new_run import NewRunScreen

    async def gpu_box(path):
        return [Check("CUDA", "ok", "1 GPU: NVIDIA H100 (79.1/80.0 GB free); driver 580.1", {}),
                Check("MLX", "info", "not installed", {})]

    checked = []

    def preflight(config, runs_dir):
        checked.append((config["platform"], config["method"]))
        return PreflightReport()

    monkeypatch.chdir(tmp_path)
    app = make_app(runs_dir, doctor=gpu_box, preflight=preflight)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        await app.workers.wait_for_complete()
        await pilot.pause(0.2)
        # The embedded default says platform auto: on a machine with a GPU that is CUDA.
        assert screen.choice("platform") == "cuda" and screen.config["platform"] == "cuda"
        note = str(screen.query_one("#platform-note", Static).render())
        assert "found: 1 GPU: NVIDIA H100" in note
        # A KTO config selects KTO; the buttons follow the file instead of overriding it.
        screen.query_one("#config").value = str(EXAMPLES / "configs" / "kto.yaml")
        await pilot.pause(0.3)
        assert screen.choice("method") == "kto" and screen.config["method"] == "kto"
        assert screen.config["dataset"]["path"].endswith("kto_tool_calls.jsonl")
        # The user's own choice wins from then on.
        screen.query_one("#platform", RadioSet).query("RadioButton")[0].value = True  # CPU
        await pilot.pause(0.3)
        assert screen.config["platform"] == "cpu" and checked[-1] == ("cpu", "kto")
        mlx = screen.query_one("#platform", RadioSet).query("RadioButton")[2]
        mlx.value = True
        await pilot.pause(0.3)
        assert "found: not installed" in str(screen.query_one("#platform-note", Static).render())


async def test_c_on_the_runs_screen_cancels_a_running_run(runs_dir, demo_model):
    import time

    from synaptic_tui.runs import read_status

    started = subprocess.run(
        [sys.executable, "-m", "synaptic_tui", "train", "--config", str(EXAMPLES / "configs" / "sft.yaml"),
         "--model", str(demo_model), "--runs-dir", str(runs_dir), "--yes", "--json",
         "--set", "training.max_steps=400", "--set", "training.save_steps=1000", "--set", "dataset.test_size=0"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    run_dir = Path(json.loads(started.stdout)["run_dir"])
    deadline = time.monotonic() + 120
    while not ((s := read_status(run_dir)) and s.state == "running" and s.step >= 1):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.1)
    app = make_app(runs_dir)
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    try:
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.press("r")
            assert isinstance(app.screen, RunsScreen)
            table = app.screen.query_one(RunsTable)
            await wait_until(pilot, lambda: table.selected_run_id == run_dir.name)
            await pilot.press("c", "y")
            await wait_until(pilot, lambda: (s := read_status(run_dir)).finished, timeout=120)
            await wait_until(pilot, lambda: "cancelled" in [str(c) for c in table.get_row(run_dir.name)])
    finally:
        if not read_status(run_dir).finished:
            subprocess.run([sys.executable, "-m", "synaptic_tui", "runs", "cancel", run_dir.name, "--runs-dir",
                            str(runs_dir)], cwd=REPO, capture_output=True)
    assert notes == [f"{run_dir.name}: stop requested; the trainer finishes its step, saves a checkpoint and ends cancelled"]
    status = read_status(run_dir)
    # Stopped early, at a step of its own choosing, with that step saved: the trainer's cancel, not a kill.
    assert (status.state, status.exit_code) == ("cancelled", 0) and 1 <= status.step < 400
    assert status.last_checkpoint == f"checkpoint-{status.step}"
    assert (run_dir / "checkpoints" / status.last_checkpoint / "adapter_model.safetensors").is_file()
