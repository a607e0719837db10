"""Real training on CPU with the demo model: runs launched, cancelled, resumed, killed and rejected as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO

from synaptic_tui.runs import list_runs, read_status

SFT = str(EXAMPLES / "configs" / "sft.yaml")
KTO = str(EXAMPLES / "configs" / "kto.yaml")
FAST = ["--yes"]


def cli(*args: str, runs_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synaptic_tui", *args, "--runs-dir", str(runs_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def spawn(*args: str, runs_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "synaptic_tui", *args, "--runs-dir", str(runs_dir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def only_run(runs_dir: Path) -> Path:
    runs = list_runs(runs_dir)
    assert len(runs) == 1, [r.run_id for r in runs]
    return runs[0].path


def wait_for(predicate, timeout: float = 120, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def test_sft_run_leaves_a_complete_run_directory(demo_model, runs_dir):
    out = cli("train", "--config", SFT, "--model", str(demo_model), *FAST, "--wait", "--json",
              "--set", "training.max_steps=4", "--set", "training.save_steps=2", "--set", "training.eval_steps=2",
              "--set", "training.save_total_limit=1", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    status = read_status(run_dir)
    assert (status.state, status.step, status.max_steps, status.engine, status.exit_code) == \
        ("succeeded", 4, 4, "transformers", 0)
    rows = metrics(run_dir)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert {"step", "epoch", "time", "loss", "learning_rate", "grad_norm"} <= set(train_rows[0])
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]
    assert (run_dir / "final" / "adapter_model.safetensors").exists()
    assert (run_dir / "final" / "adapter_config.json").exists()
    assert (run_dir / "train.log").read_text().count("[synaptic] run succeeded") == 1
    # save_total_limit=1 rotates checkpoints, but never the best one.
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    best = status.extra["best_checkpoint"]
    assert best in kept and (run_dir / "checkpoints" / best / "optimizer.pt").exists()
    assert yaml_config(run_dir)["model"]["name"] == str(demo_model)


def yaml_config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "run.yaml").read_text())


def test_kto_run_logs_kl_and_rewards(demo_model, runs_dir):
    out = cli("train", "--config", KTO, "--model", str(demo_model), *FAST, "--wait",
              "--set", "training.max_steps=3", "--set", "training.save_steps=3", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    run_dir = only_run(runs_dir)
    assert read_status(run_dir).state == "succeeded"
    train_rows = [r for r in metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    keys = set().union(*train_rows)
    assert {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"} <= keys
    assert (run_dir / "checkpoints" / "checkpoint-3").is_dir() and (run_dir / "final").is_dir()


def test_cancel_then_resume_continues_the_step_count(demo_model, runs_dir):
    started = cli("train", "--config", SFT, "--model", str(demo_model), *FAST, "--json",
                  "--set", "training.max_steps=16", "--set", "training.save_steps=100",
                  "--set", "dataset.test_size=0", runs_dir=runs_dir)
    assert started.returncode == 0, started.stderr
    run_dir = Path(json.loads(started.stdout)["run_dir"])
    wait_for(lambda: (read_status(run_dir) or None) and read_status(run_dir).step >= 3)
    cancelled = cli("runs", "cancel", run_dir.name, runs_dir=runs_dir)
    assert cancelled.returncode == 0, cancelled.stderr
    status = wait_for(lambda: (s := read_status(run_dir)) and s.finished and s)
    assert status.state == "cancelled" and status.exit_code == 0
    stopped_at = status.step
    assert 3 <= stopped_at < 16
    assert status.last_checkpoint == f"checkpoint-{stopped_at}"
    assert (run_dir / "checkpoints" / status.last_checkpoint / "optimizer.pt").exists()

    resumed = cli("runs", "resume", run_dir.name, runs_dir=runs_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from checkpoint-{stopped_at}" in resumed.stdout
    status = wait_for(lambda: (s := read_status(run_dir)) and s.state == "succeeded" and s, timeout=180)
    assert status.step == 16
    steps = [r["step"] for r in metrics(run_dir) if "loss" in r]
    assert steps == list(range(1, 17)), "one line per step, continuous across the resume"


def test_run_survives_the_launching_process_being_killed(demo_model, runs_dir):
    launcher = spawn("train", "--config", SFT, "--model", str(demo_model), *FAST, "--wait",
                     "--set", "training.max_steps=8", "--set", "dataset.test_size=0", runs_dir=runs_dir)
    run_dir = wait_for(lambda: list_runs(runs_dir) and list_runs(runs_dir)[0].path)
    wait_for(lambda: (s := read_status(run_dir)) and s.state == "running" and s.step >= 1)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    status = wait_for(lambda: (s := read_status(run_dir)) and s.finished and s, timeout=180)
    assert status.state == "succeeded" and status.step == 8


def test_a_trainer_that_dies_is_reported_failed(demo_model, runs_dir):
    started = cli("train", "--config", SFT, "--model", str(demo_model), *FAST, "--json",
                  "--set", "training.max_steps=400", "--set", "dataset.test_size=0", runs_dir=runs_dir)
    run_dir = Path(json.loads(started.stdout)["run_dir"])
    wait_for(lambda: (s := read_status(run_dir)) and s.step >= 1)
    os.killpg(json.loads((run_dir / "launch.json").read_text())["pgid"], signal.SIGKILL)
    shown = wait_for(lambda: (out := cli("runs", "show", run_dir.name, "--json", runs_dir=runs_dir))
                     and json.loads(out.stdout)["state"] == "failed" and json.loads(out.stdout))
    assert "vanished" in shown["error"]
    assert read_status(run_dir).state == "failed"


@pytest.mark.parametrize(("rows", "method", "expected"), [
    (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}', '{"messages": ['],
     "sft", "bad.jsonl:2: not valid JSON"),
    (['{"text": "no messages here"}'], "sft", "bad.jsonl:1: missing 'messages'"),
    (['{"prompt": "a", "completion": "b"}'], "kto", "bad.jsonl:1: missing 'label'"),
    ([], "sft", "bad.jsonl: no rows (the file is empty)"),
])
def test_bad_dataset_is_rejected_before_anything_is_created(demo_model, runs_dir, tmp_path, rows, method, expected):
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(r + "\n" for r in rows))
    out = cli("train", "--method", method, "--model", str(demo_model), "--dataset", str(data),
              "--set", "training.per_device_train_batch_size=2", runs_dir=runs_dir)
    assert out.returncode == 2
    assert f"{tmp_path}/{expected}" in out.stderr
    assert list(runs_dir.iterdir()) == []


def test_preflight_stops_a_run_with_nothing_to_learn(demo_model, runs_dir):
    out = cli("train", "--config", SFT, "--model", str(demo_model), "--set", "model.max_seq_length=256", "--yes",
              runs_dir=runs_dir)
    assert out.returncode == 2
    assert "nothing would be left to learn from" in out.stderr
    assert list(runs_dir.iterdir()) == []


def test_preflight_warnings_need_yes(demo_model, runs_dir):
    out = cli("train", "--config", SFT, "--model", str(demo_model), "--set", "training.learning_rate=0.5",
              runs_dir=runs_dir)
    assert out.returncode == 2
    assert "learning_rate 0.5 is high" in out.stderr and "--yes" in out.stderr
    assert list(runs_dir.iterdir()) == []


def test_auto_config_shows_its_changes(demo_model, runs_dir):
    out = cli("train", "--config", SFT, "--model", str(demo_model), "--auto", "--dry-run", "--json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    changes = {c["key"]: c for c in result["auto_changes"]}
    # A 0.3M-parameter model on ~170k tokens: the smallest preset, capped for small data.
    assert changes["training.per_device_train_batch_size"]["new"] == 4
    assert result["config"]["training"]["per_device_train_batch_size"] == 4
    # The rows need ~1.9k tokens: the tiny-model preset's 512 would truncate every answer away.
    assert result["config"]["model"]["max_seq_length"] == 2048 and "model.max_seq_length" not in changes
    assert changes["training.learning_rate"]["new"] == pytest.approx(1e-4) and "lora.r" not in changes
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


def test_two_process_run_through_accelerate(demo_model, runs_dir):
    out = cli("train", "--config", SFT, "--model", str(demo_model), *FAST, "--wait",
              "--set", "training.num_processes=2", "--set", "training.max_steps=4", "--set", "training.save_steps=2",
              "--set", "dataset.test_size=0", runs_dir=runs_dir, timeout=300)
    assert out.returncode == 0, out.stderr
    run_dir = only_run(runs_dir)
    log = (run_dir / "train.log").read_text()
    assert "[rank1]" in log or log.count("[synaptic] 100 SFT rows") == 2, "two processes ran"
    assert json.loads((run_dir / "launch.json").read_text())["command"][2:4] == ["accelerate.commands.launch", "--multi_gpu"]
    rows = [r for r in metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4], "rank 0 alone writes metrics"
    # DDP: each step sees both processes' batches, so an epoch is half as many steps.
    assert rows[0]["epoch"] == pytest.approx(2 * 2 / 100)
