"""The headless command line, run as a user runs it: a real subprocess per call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO

from synaptic_tui.cli import build_parser

COMMANDS = ["train", "runs", "export", "upload", "eval", "pipeline", "doctor", "demo-model"]


def cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synaptic_tui", *args],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120,
    )


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "synaptic-tui"
    assert script.exists()
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("synaptic-tui ")


def test_help_lists_every_command():
    out = cli("--help")
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout


@pytest.mark.parametrize("command", COMMANDS + ["runs list", "runs show", "runs cancel", "runs resume"])
def test_every_command_documents_runs_dir_and_json(command):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command.split()[0]]
    if " " in command:
        sub = sub._subparsers._group_actions[0].choices[command.split()[1]]
    text = sub.format_help()
    assert "--runs-dir" in text and "--json" in text


def test_runs_list_and_show(sample_runs):
    out = cli("runs", "list", "--runs-dir", str(sample_runs))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["RUN", "METHOD", "STATE", "STEP", "MODEL"]
    assert lines[1].startswith("20261122-080000-sft-qwen2.5-0.5b")
    assert any(line.startswith("sft_output_rtx3090/20251101_120000") for line in lines)

    shown = cli("--runs-dir", str(sample_runs), "runs", "show", "20261121", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["state"] == "failed" and data["error"] == "CUDA out of memory"
    assert [c["name"] for c in data["checkpoints"]] == ["checkpoint-10"]


def test_runs_dir_from_environment(sample_runs, tmp_path):
    out = cli("runs", "--json", cwd=tmp_path, env={"SYNAPTIC_RUNS_DIR": str(sample_runs)})
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 5
    filtered = cli("runs", "list", "--state", "failed", "--json", cwd=tmp_path, env={"SYNAPTIC_RUNS_DIR": str(sample_runs)})
    assert [r["run_id"] for r in json.loads(filtered.stdout)] == ["20261121-101000-kto-demo-model"]


def test_unknown_run_is_a_clear_error(sample_runs):
    out = cli("runs", "show", "nope", "--runs-dir", str(sample_runs))
    assert out.returncode == 2
    assert out.stderr.strip() == f"synaptic-tui: no run 'nope' in {sample_runs}"


def test_bad_config_gives_one_clear_line_and_exit_2(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("method: sft\ntraining:\n  learning_rate: -1\n")
    out = cli("train", "--config", str(config), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"{config}:3 training.learning_rate: must be > 0"
    assert out.stdout == ""


def test_dry_run_prints_resolved_config_with_overrides(tmp_path, demo_model):
    config = tmp_path / "config.yaml"
    config.write_text(f"method: sft\nmodel:\n  name: {demo_model}\n  max_seq_length: 2048\ntraining:\n  learning_rate: 0.0002\n")
    out = cli("train", "--config", str(config), "--dry-run", "--json", "--set", "training.learning_rate=1e-4",
              "--method", "kto", "--dataset", str(EXAMPLES / "data" / "kto_tool_calls.jsonl"),
              "--set", "training.per_device_train_batch_size=4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    data = result["config"]
    assert data["method"] == "kto"
    assert data["training"]["learning_rate"] == pytest.approx(1e-4)
    assert data["dataset"]["path"] == str(EXAMPLES / "data" / "kto_tool_calls.jsonl")
    assert result["preflight"]["ok"] is True
    assert result["preflight"]["parameters"] == json.loads((demo_model / "synaptic_demo.json").read_text())["parameters"]
    assert not (tmp_path / "runs").exists(), "a dry run creates nothing"


def test_demo_model_command_builds_a_model(tmp_path):
    target = tmp_path / "demo"
    out = cli("demo-model", str(target), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert Path(data["path"]) == target and data["built"] is True
    assert (target / "config.json").exists() and (target / "tokenizer.json").exists()


def test_doctor_json_reports_this_machine(tmp_path):
    out = cli("doctor", "--json", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    checks = json.loads(out.stdout)
    assert [c["name"] for c in checks] == ["Python", "Extras", "CUDA", "MLX", "Unsloth", "Serving", "Disk", "Memory",
                                           "Ollama", "LM Studio", "HF token"]
    # Only a check that fails (this Python is new enough, so none here) makes doctor exit 1.
    assert [c["name"] for c in checks if c["status"] == "fail"] == []
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(("statuses", "code"), [(["ok", "fail", "warn"], 1), (["ok", "warn", "info"], 0)])
def test_doctor_exits_1_only_when_a_check_fails(monkeypatch, capsys, statuses, code):
    from synaptic_tui import cli as cli_module, doctor

    async def checks(runs_dir, **kwargs):
        return [doctor.Check(f"Check{i}", status, f"summary {i}") for i, status in enumerate(statuses)]

    monkeypatch.setattr(doctor, "run_checks", checks)
    assert cli_module.main(["doctor"]) == code
    assert capsys.readouterr().out.splitlines() == [f"Check{i}  {status:<4}  summary {i}"
                                                    for i, status in enumerate(statuses)]
