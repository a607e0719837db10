"""The run directory contract: ids, status.json, run creation, listing and legacy discovery."""

from __future__ import annotations

import json
import threading
from datetime import datetime

import pytest
import yaml

from conftest import write_legacy_runs, write_run
from synaptic_tui import runs as runs_mod
from synaptic_tui.runs import (
    RunStatus,
    create_run,
    find_run,
    list_checkpoints,
    list_runs,
    make_run_id,
    read_status,
    resolve_runs_dir,
    slugify,
    write_status,
)


def test_run_id_format():
    run_id = make_run_id("sft", "Qwen/Qwen2.5-0.5B-Instruct", datetime(2026, 11, 22, 14, 3, 9))
    assert run_id == "20261122-140309-sft-qwen2.5-0.5b-instruct"
    assert runs_mod.RUN_ID_RE.match(run_id)


@pytest.mark.parametrize(("text", "slug"), [
    ("/home/me/models/demo-model/", "demo-model"),
    ("My Model!!", "my-model"),
    ("???", "run"),
])
def test_slugify(text, slug):
    assert slugify(text) == slug


def test_runs_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert resolve_runs_dir(None) == tmp_path / "runs"
    monkeypatch.setenv("SYNAPTIC_RUNS_DIR", str(tmp_path / "env"))
    assert resolve_runs_dir(None) == tmp_path / "env"
    assert resolve_runs_dir(str(tmp_path / "cli")) == tmp_path / "cli"


def test_status_round_trip_keeps_unknown_keys(tmp_path):
    status = RunStatus(state="running", pid=123, pgid=123, step=4, max_steps=10, engine="transformers")
    status.extra["peak_memory_gb"] = 1.5
    write_status(tmp_path, status)
    again = read_status(tmp_path)
    assert again.state == "running" and again.pid == 123 and again.step == 4 and again.max_steps == 10
    assert again.extra == {"peak_memory_gb": 1.5}
    assert again.updated_at is not None
    assert not list(tmp_path.glob(".status.json.*")), "temp files must not be left behind"


def test_status_missing_or_corrupt_is_none(tmp_path):
    assert read_status(tmp_path) is None
    (tmp_path / "status.json").write_text('{"state": "runn')
    assert read_status(tmp_path) is None


def test_status_writes_are_atomic_under_concurrent_reads(tmp_path):
    """A reader polling status.json while it is rewritten never sees a torn file."""
    write_status(tmp_path, RunStatus(state="running"))
    stop = threading.Event()
    torn = []

    def reader():
        while not stop.is_set():
            text = (tmp_path / "status.json").read_text()
            try:
                json.loads(text)
            except ValueError:
                torn.append(text)

    thread = threading.Thread(target=reader)
    thread.start()
    for step in range(300):
        write_status(tmp_path, RunStatus(state="running", step=step, error="x" * (step * 10)))
    stop.set()
    thread.join()
    assert torn == []
    assert read_status(tmp_path).step == 299


def test_create_run_writes_contract(runs_dir):
    config = {"method": "sft", "model": {"name": "/m/demo-model"}, "training": {"learning_rate": 0.0002}}
    run_dir = create_run(runs_dir, config, "sft", "demo-model")
    assert runs_mod.RUN_ID_RE.match(run_dir.name)
    assert yaml.safe_load((run_dir / "run.yaml").read_text()) == config
    status = read_status(run_dir)
    assert (status.state, status.method, status.model) == ("queued", "sft", "/m/demo-model")
    # Listing reads the summary from status.json alone.
    (run_dir / "run.yaml").write_text("not: [valid")
    assert list_runs(runs_dir)[0].model == "/m/demo-model"
    # A second run in the same second gets its own directory.
    other = create_run(runs_dir, config, "sft", "demo-model")
    assert other != run_dir and other.name.startswith(run_dir.name)
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted([run_dir.name, other.name])


def test_create_run_leaves_nothing_on_failure(runs_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(runs_mod, "write_status", boom)
    with pytest.raises(OSError, match="disk full"):
        create_run(runs_dir, {"method": "sft"}, "sft", "x")
    assert list(runs_dir.iterdir()) == []


def test_list_runs_newest_first_with_legacy(sample_runs):
    runs = list_runs(sample_runs)
    ids = [r.run_id for r in runs]
    assert ids == [
        "20261122-080000-sft-qwen2.5-0.5b",
        "20261121-101000-kto-demo-model",
        "20261120-091500-sft-demo-model",
        "kto_output_rtx3090/20251102_090000",
        "sft_output_rtx3090/20251101_120000",
    ]
    by_id = {r.run_id: r for r in runs}
    sft = by_id["20261120-091500-sft-demo-model"]
    assert (sft.method, sft.state, sft.model, sft.legacy) == ("sft", "succeeded", "/models/demo-model", False)
    assert [c.name for c in sft.checkpoints()] == ["checkpoint-20", "checkpoint-40", "checkpoint-60", "final"]
    legacy_sft = by_id["sft_output_rtx3090/20251101_120000"]
    assert legacy_sft.legacy and legacy_sft.method == "sft" and legacy_sft.state == "succeeded"
    assert [c.name for c in legacy_sft.checkpoints()] == ["checkpoint-50", "checkpoint-100", "final_model"]
    assert legacy_sft.metrics_path.name == "training_20251101_120000.jsonl"
    legacy_kto = by_id["kto_output_rtx3090/20251102_090000"]
    assert legacy_kto.method == "kto" and legacy_kto.state == "unknown"


def test_legacy_discovery_is_read_only(tmp_path):
    roots = write_legacy_runs(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    runs = list_runs(tmp_path / "nothing-here", extra_roots=[tmp_path])
    assert {r.path for r in runs} == set(roots.values())
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_legacy_run_reads_its_config_and_a_legacy_root_can_be_the_runs_dir(tmp_path):
    roots = write_legacy_runs(tmp_path)
    (roots["sft"] / "config.yaml").write_text(
        "model:\n  model_name: unsloth/Qwen2.5-0.5B-Instruct\n"
        "dataset:\n  local_file: data/syngen_tools_sft.jsonl\n  use_local_file: true\n")
    # `--runs-dir sft_output_rtx3090`: the original tuner's output folder itself.
    [run] = list_runs(tmp_path / "sft_output_rtx3090")
    assert run.path == roots["sft"] and run.legacy and run.method == "sft"
    assert (run.model, run.dataset) == ("unsloth/Qwen2.5-0.5B-Instruct", "data/syngen_tools_sft.jsonl")
    assert [r.method for r in list_runs(tmp_path / "kto_output_rtx3090")] == ["kto"]


def test_list_runs_skips_foreign_and_half_created_dirs(runs_dir):
    write_run(runs_dir, "20261120-091500-sft-ok", status={"state": "succeeded"})
    (runs_dir / "random-folder").mkdir()
    (runs_dir / ".creating-abc").mkdir()
    (runs_dir / "notes.txt").write_text("hi")
    assert [r.run_id for r in list_runs(runs_dir)] == ["20261120-091500-sft-ok"]


def test_list_runs_missing_dir_is_empty(tmp_path):
    assert list_runs(tmp_path / "absent") == []


def test_checkpoints_sorted_numerically(tmp_path):
    for step in (100, 20, 3):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-x").mkdir()
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 20, 100]


def test_find_run_by_id_prefix_and_path(sample_runs):
    assert find_run(sample_runs, "20261121-101000-kto-demo-model").method == "kto"
    assert find_run(sample_runs, "20261122").run_id == "20261122-080000-sft-qwen2.5-0.5b"
    assert find_run(sample_runs, str(sample_runs / "20261120-091500-sft-demo-model")).state == "succeeded"
    with pytest.raises(LookupError, match="matches 3 runs"):
        find_run(sample_runs, "2026112")
    with pytest.raises(LookupError, match="no run 'nope'"):
        find_run(sample_runs, "nope")


def test_the_runs_screen_shows_the_best_checkpoint_and_its_score(sample_runs):
    from synaptic_tui.widgets.runs_table import WIDE_COLUMNS, run_cells

    by_id = {r.run_id: r for r in list_runs(sample_runs)}
    cells = dict(zip((key for key, *_ in WIDE_COLUMNS), run_cells(by_id["20261120-091500-sft-demo-model"], wide=True)))
    assert cells["best"] == "@40 0.412 eval" and cells["dataset"] == "sft.jsonl"
    kto = dict(zip((key for key, *_ in WIDE_COLUMNS), run_cells(by_id["20261121-101000-kto-demo-model"], wide=True)))
    assert kto["best"] == ""  # failed before any ranking
