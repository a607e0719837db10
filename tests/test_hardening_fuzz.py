"""Fuzzing the run directory contract: generated combinations of missing, empty, corrupt, wrongly typed,
huge and hostile status.json / launch.json / metrics.jsonl / run.yaml / train.log / checkpoint names,
read by `runs list`, `runs show`, the ranking, and the TUI's home, runs and run view screens. No
exception may escape, and a good run beside them always lists as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CONTROL = "20261120-091500-sft-control"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)
steps = st.one_of(st.integers(min_value=-5, max_value=50), st.sampled_from([10**12, 10**23, -(10**9)]),
                  st.booleans(), st.floats(allow_nan=True), st.text(max_size=5), st.none())
metric_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**400), 10**400),
                          st.text(max_size=5), st.booleans(), st.none(), st.lists(st.integers(), max_size=2))


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# Each "kind" of file is a JSON-able recipe, so hypothesis can shrink and print it.
special = st.sampled_from(["missing", "empty", "directory", "fifo", "symlink loop", "garbage", "huge", "deep"])
status_kind = st.one_of(special, st.fixed_dictionaries({}, optional={
    "state": st.one_of(st.sampled_from(["queued", "running", "succeeded", "failed", "cancelled", "paused"]),
                       json_values),
    "started_at": st.one_of(st.just("2026-11-20T09:15:00+00:00"), st.just("0001-01-01T00:00:00"),
                            st.just("9999-12-31T23:59:59+14:00"), json_values),
    "ended_at": json_values, "step": steps, "max_steps": steps, "pid": steps, "pgid": steps,
    "error": st.one_of(st.just("   \n  "), st.just(""), json_values), "engine": json_values,
    "best_checkpoint": json_values, "best_score": st.one_of(
        st.fixed_dictionaries({"metric": json_values, "value": metric_values}), json_values),
    "stop_requested_at": json_values, "model": json_values, "method": json_values,
}))
launch_kind = st.one_of(special, st.fixed_dictionaries({
    "pid": st.sampled_from(["dead", "self", 0, -1, 1, 2**40, "x", None]),
    "pgid": st.sampled_from(["dead", 0, -1, 2**40, None]),
    "host": st.sampled_from(["here", "elsewhere", 7]),
    "start_marker": st.one_of(st.none(), st.text(max_size=4), st.integers()),
    "command": st.one_of(st.just(["python"]), json_values),
}))
record = st.dictionaries(st.sampled_from(["step", "loss", "eval_loss", "grad_norm", "learning_rate", "time", "kl",
                                          "rewards/margins", "epoch", "x" * 100]), metric_values, max_size=6)
metrics_kind = st.one_of(special, st.lists(st.one_of(record.map(lambda r: {"step": 1, **r}),
                                                     st.fixed_dictionaries({"step": steps}), json_values), max_size=12))
config_kind = st.one_of(special, st.just("valid"), st.just("python tag"),
                        st.fixed_dictionaries({"method": json_values,
                                               "training": st.fixed_dictionaries({"save_steps": steps})}))
checkpoint_names = st.lists(st.sampled_from(
    ["checkpoint-1", "checkpoint-007", "checkpoint-" + "9" * 30, "checkpoint--1", "checkpoint-x", "checkpoint-3 loop",
     "checkpoint-5 file", "final", "final file", "checkpoint-10"]), max_size=4, unique=True)
run_recipe = st.fixed_dictionaries({"status": status_kind, "launch": launch_kind, "metrics": metrics_kind,
                                    "config": config_kind, "log": special, "checkpoints": checkpoint_names})


def write_special(path: Path, kind: str) -> bool:
    """Put a hostile file at `path`; False when `kind` is not one of the special ones."""
    if kind == "missing":
        return True
    if kind == "empty":
        path.write_text("")
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink loop":
        path.symlink_to(path)
    elif kind == "garbage":
        path.write_bytes(b'\xff\xfe{"state": "succ\x00\n[1, 2')
    elif kind == "huge":
        path.write_text(" " * (2 << 20) + "{}")
    elif kind == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        return False
    return True


def build_run(runs_dir: Path, run_id: str, recipe: dict) -> Path:
    run_dir = runs_dir / run_id
    run_dir.mkdir()
    config = recipe["config"]
    if not (isinstance(config, str) and write_special(run_dir / "run.yaml", config)):
        if config == "valid":
            config = {"method": "sft", "model": {"name": "/models/m"}, "training": {"save_steps": 5}}
        if config == "python tag":
            (run_dir / "run.yaml").write_text("method: !!python/object/apply:os.system ['echo pwned']\n")
        else:
            (run_dir / "run.yaml").write_text(json.dumps(config, default=str))  # JSON is YAML
    status = recipe["status"]
    if not (isinstance(status, str) and write_special(run_dir / "status.json", status)):
        (run_dir / "status.json").write_text(json.dumps(status))
    launch = recipe["launch"]
    if not (isinstance(launch, str) and write_special(run_dir / "launch.json", launch)):
        values = {"dead": dead_pid(), "self": os.getpid(), "here": socket.gethostname()}
        (run_dir / "launch.json").write_text(json.dumps({k: values.get(v, v) if isinstance(v, str) else v
                                                         for k, v in launch.items()}))
    metrics = recipe["metrics"]
    if not (isinstance(metrics, str) and write_special(run_dir / "metrics.jsonl", metrics)):
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics) + '{"step": 3, "lo')
    write_special(run_dir / "train.log", recipe["log"])
    for name in recipe["checkpoints"]:
        root = run_dir if name.startswith("final") else run_dir / "checkpoints"
        root.mkdir(exist_ok=True)
        target = root / name.split(" ")[0]
        if target.exists() or target.is_symlink():
            continue  # "final" and "final file": one of them
        if name.endswith(" loop"):
            target.symlink_to(target)
        elif name.endswith(" file"):
            target.write_text("not a directory")
        else:
            target.mkdir(exist_ok=True)
    return run_dir


def build_runs_dir(root: Path, recipes: list[dict]) -> Path:
    from conftest import write_run

    runs_dir = root / "runs"
    runs_dir.mkdir()
    write_run(runs_dir, CONTROL, status={"state": "succeeded", "step": 4, "max_steps": 4,
                                         "started_at": "2026-11-20T09:15:00+00:00"},
              checkpoints=(2, 4), metrics=[{"step": 2, "loss": 2.0}, {"step": 4, "loss": 1.0}])
    for i, recipe in enumerate(recipes):
        build_run(runs_dir, f"20261121-{i:06d}-sft-hostile", recipe)
    (runs_dir / "20261122-000000-sft-loop").symlink_to(runs_dir / "20261122-000000-sft-loop")
    return runs_dir


def run_cli(*args: str) -> tuple[int, str, str]:
    from synaptic_tui.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(run_recipe, min_size=1, max_size=3))
def test_hostile_run_directories_never_crash_the_command_line(recipes):
    from synaptic_tui.monitor import rank_run
    from synaptic_tui.runs import list_runs

    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = build_runs_dir(Path(tmp), recipes)
        code, out, err = run_cli("--runs-dir", str(runs_dir), "runs", "list", "--json")
        assert code == 0, err
        listed = {r["run_id"]: r for r in json.loads(out)}
        assert listed[CONTROL]["state"] == "succeeded" and listed[CONTROL]["step"] == 4
        assert listed["20261122-000000-sft-loop"]["state"] == "unreadable"
        for run_id in listed:
            code, out, err = run_cli("--runs-dir", str(runs_dir), "runs", "show", run_id)
            assert code == 0, err
        for run in list_runs(runs_dir):
            rank_run(run)
        assert rank_run(next(r for r in list_runs(runs_dir) if r.run_id == CONTROL)).best == "checkpoint-4"


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(run_recipe, min_size=3, max_size=4))
def test_hostile_run_directories_never_crash_the_tui(recipes):
    from synaptic_tui.app import SynapticApp
    from synaptic_tui.screens.run_view import RunScreen
    from synaptic_tui.screens.runs import RunsScreen
    from synaptic_tui.services import Services
    from synaptic_tui.widgets.runs_table import RunsTable

    async def drive(runs_dir: Path) -> None:
        app = SynapticApp(Services.create(runs_dir, refresh_seconds=0.2))
        async with app.run_test(size=(120, 40)) as pilot:
            home = app.screen.query_one(RunsTable)
            assert CONTROL in {r.run_id for r in home.runs}
            await pilot.press("r")
            await pilot.pause(0.3)
            assert isinstance(app.screen, RunsScreen)
            shown = app.screen.query_one(RunsTable)
            assert CONTROL in {r.run_id for r in shown.runs}
            for run in list(shown.runs):
                app.show_run(run.path)
                await pilot.pause(0.3)
                assert isinstance(app.screen, RunScreen)
                await pilot.press("escape")
                await pilot.pause(0.05)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(drive(build_runs_dir(Path(tmp), recipes)))
