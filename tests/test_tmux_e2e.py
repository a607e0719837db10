"""The real program in a real terminal (tmux), following a real demo training run, keyboard only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO

from synaptic_tui.runs import list_runs, read_status



@pytest.fixture
def tmux() -> str:
    """tmux, which .ci/run installs. Without it these tests fail: a skip would let CI pass without them."""
    path = shutil.which("tmux")
    if path is None:
        pytest.fail("tmux is not installed; the end-to-end tests need it (.ci/run installs it: apt-get install tmux)")
    return path


class Terminal:
    def __init__(self, tmux: str, command: str, env: dict[str, str], size=(120, 40)) -> None:
        self.socket = f"synaptic-test-{uuid.uuid4().hex[:8]}"
        self.binary = tmux
        self.env = env
        self.tmux("new-session", "-d", "-x", str(size[0]), "-y", str(size[1]), command)

    def tmux(self, *args: str) -> str:
        out = subprocess.run([self.binary, "-L", self.socket, *args], capture_output=True, text=True, env=self.env,
                             cwd=REPO, timeout=30)
        return out.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.tmux("send-keys", key)
            time.sleep(0.3)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([self.binary, "-L", self.socket, "kill-server"], capture_output=True)


def test_follow_a_training_run_close_and_reattach(tmux, demo_model, runs_dir):
    env = {**os.environ, "TERM": "xterm-256color", "TEXTUAL_COLOR_SYSTEM": "256"}
    started = subprocess.run(
        [sys.executable, "-m", "synaptic_tui", "train", "--config", str(EXAMPLES / "configs" / "sft.yaml"),
         "--model", str(demo_model), "--runs-dir", str(runs_dir), "--yes", "--json",
         "--set", "training.max_steps=48", "--set", "training.save_steps=4", "--set", "dataset.test_size=0"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert started.returncode == 0, started.stderr
    run_dir = Path(json.loads(started.stdout)["run_dir"])
    app = f"{sys.executable} -m synaptic_tui --runs-dir {runs_dir}"
    terminal = Terminal(tmux, app, env)
    try:
        terminal.wait_for("Recent runs", timeout=30)
        terminal.keys("r")
        terminal.wait_for(run_dir.name)
        terminal.keys("Enter")
        screen = terminal.wait_for("checkpoint-4")
        assert "Checkpoint" in screen and "Eval loss" in screen
        terminal.keys("q")  # quit mid-run: the run must go on
    finally:
        terminal.close()
    assert read_status(run_dir).state == "running", "quitting the app left the run running"
    # Reopen mid-run: the run is picked up again, live, from wherever it is now.
    terminal = Terminal(tmux, app, env)
    try:
        terminal.wait_for("Recent runs", timeout=30)
        terminal.keys("r", "Enter")
        terminal.wait_for("running   engine transformers")
        at_reopen = read_status(run_dir).step
        assert at_reopen < 48, "the run finished before the app was reopened: nothing was reattached"
        following = f"checkpoint-{(at_reopen // 4 + 1) * 4}"  # one the trainer had not saved at reopen
        terminal.wait_for(following, timeout=180)
        terminal.wait_for("succeeded   engine transformers", timeout=240)
        # The best checkpoint (the starred row), found and acted on with the keyboard alone.
        starred = [line for line in terminal.screen().splitlines() if "★" in line]
        assert len(starred) == 1, terminal.screen()
        best = starred[0].split("★", 1)[1].split()[0]
        terminal.keys("b", "Enter")
        terminal.wait_for(f"{run_dir.name} / {best}", timeout=10)
        terminal.keys("Escape")
    finally:
        terminal.close()
    assert read_status(run_dir).state == "succeeded"
    assert [r.run_id for r in list_runs(runs_dir)] == [run_dir.name]


def test_home_fits_an_80x24_terminal(tmux, sample_runs):
    env = {**os.environ, "TERM": "xterm-256color", "TEXTUAL_COLOR_SYSTEM": "256"}
    terminal = Terminal(tmux, f"{sys.executable} -m synaptic_tui --runs-dir {sample_runs} --no-mouse", env, size=(80, 24))
    try:
        # The footer is painted last; capture-pane can catch a frame half drawn.
        screen = terminal.wait_for("q Quit", timeout=30)
        assert "n New run" in screen and "Recent runs" in screen
        terminal.keys("d")
        terminal.wait_for("HF token", timeout=30)
        terminal.keys("Escape", "q")
    finally:
        terminal.close()
