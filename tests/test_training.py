"""Real training on CPU with the demo model: runs launched, cancelled, resumed, killed and rejected as a user would."""

from __future__ import annotations

import json
import os
import re
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
    # --wait follows with a progress line (each 10 s and at the end when stderr is not a terminal).
    assert re.search(r"^succeeded step 3/3  loss \d+\.\d{4}$", out.stderr, re.M), out.stderr


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
    # The launcher leads its own process group, as a shell gives each job one: killing that whole
    # group is what closing the terminal (SIGHUP) or losing SSH does to everything started from it.
    launcher = subprocess.Popen([sys.executable, "-m", "synaptic_tui", "train", "--config", SFT, "--model",
                                 str(demo_model), *FAST, "--wait", "--set", "training.max_steps=8",
                                 "--set", "dataset.test_size=0", "--runs-dir", str(runs_dir)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                process_group=0)
    run_dir = wait_for(lambda: list_runs(runs_dir) and list_runs(runs_dir)[0].path)
    wait_for(lambda: (s := read_status(run_dir)) and s.state == "running" and s.step >= 1)
    trainer = read_status(run_dir).pid
    assert os.getsid(trainer) != os.getsid(launcher.pid), "the trainer has a session of its own"
    os.killpg(launcher.pid, signal.SIGHUP)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    status = wait_for(lambda: (s := read_status(run_dir)) and s.finished and s, timeout=180)
    assert status.state == "succeeded" and status.step == 8


def test_the_best_checkpoint_survives_rotation(real_model, runs_dir):
    # One warm-up step: the first step's learning rate is 0 (checkpoint-1 is the pretrained model) and the
    # second's is 0.05, which wrecks it, so the best checkpoint is the older one: save_total_limit=1 alone
    # would delete it. (The random demo model's eval loss sits at ln(vocab) whatever is done to it.)
    out = cli("train", "--config", SFT, "--model", str(real_model), *FAST, "--wait", "--json",
              "--set", "training.max_steps=2", "--set", "training.save_steps=1", "--set", "training.eval_steps=1",
              "--set", "training.save_total_limit=1", "--set", "training.learning_rate=0.05",
              "--set", "training.warmup_steps=1", "--set", "dataset.test_size=0.02", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    evals = {r["step"]: r["eval_loss"] for r in metrics(run_dir) if "eval_loss" in r}
    assert evals[1] < evals[2], f"the setup needs the first checkpoint to be the best: {evals}"
    status = read_status(run_dir)
    assert status.extra["best_checkpoint"] == "checkpoint-1"
    assert status.extra["best_score"] == {"metric": "eval_loss", "value": pytest.approx(evals[1], abs=1e-5)}
    assert (run_dir / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors").exists()
    # What status.json calls the last checkpoint is one that is still on disk.
    assert (run_dir / "checkpoints" / status.last_checkpoint).is_dir()


def test_a_trainer_that_raises_ends_failed_with_the_traceback(demo_model, runs_dir):
    out = cli("train", "--config", SFT, "--model", str(demo_model), *FAST, "--wait", "--json",
              "--set", "training.max_steps=2", "--set", "lora.target_modules=[no_such_proj]", runs_dir=runs_dir)
    assert out.returncode == 1
    run_dir = only_run(runs_dir)
    status = read_status(run_dir)
    assert (status.state, status.exit_code) == ("failed", 1)
    # The last lines of the traceback: where it happened and what was raised.
    assert "File \"" in status.error and "Error: Target modules {'no_such_proj'} not found" in status.error
    assert "no_such_proj" in (run_dir / "train.log").read_text()


def test_resume_from_an_earlier_checkpoint_rewinds_metrics_and_schedule(demo_model, runs_dir):
    out = cli("train", "--config", SFT, "--model", str(demo_model), *FAST, "--wait", "--json",
              "--set", "training.max_steps=6", "--set", "training.save_steps=2", "--set", "dataset.test_size=0",
              "--set", "training.save_total_limit=5", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    first = {r["step"]: r for r in metrics(run_dir) if "loss" in r}
    resumed = cli("runs", "resume", run_dir.name, "--from", "checkpoint-2", runs_dir=runs_dir)
    assert resumed.returncode == 0, resumed.stderr
    status = wait_for(lambda: (s := read_status(run_dir)) and s.state == "succeeded" and s.ended_at and s, timeout=180)
    assert status.step == 6
    second = [r for r in metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in second] == [1, 2, 3, 4, 5, 6], "no step twice in metrics.jsonl"
    # The scheduler came back with the optimizer: the learning rate goes on exactly where it was.
    assert [r["learning_rate"] for r in second] == pytest.approx([first[s]["learning_rate"] for s in range(1, 7)])
    # What the abandoned path wrote is kept aside, not deleted.
    [superseded] = run_dir.glob("superseded-*")
    assert sorted(json.loads(line)["step"] for line in (superseded / "metrics.jsonl").read_text().splitlines()
                  if "loss" in json.loads(line)) == [3, 4, 5, 6]
    assert sorted(p.name for p in (superseded / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert (superseded / "final" / "adapter_model.safetensors").exists()
    assert (run_dir / "final" / "adapter_model.safetensors").exists()


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


def test_a_two_process_run_cancels_at_one_step_and_resumes(demo_model, runs_dir):
    started = cli("train", "--config", SFT, "--model", str(demo_model), *FAST, "--json",
                  "--set", "training.num_processes=2", "--set", "training.max_steps=12",
                  "--set", "training.save_steps=100", "--set", "dataset.test_size=0", runs_dir=runs_dir, timeout=300)
    assert started.returncode == 0, started.stderr
    run_dir = Path(json.loads(started.stdout)["run_dir"])
    wait_for(lambda: (s := read_status(run_dir)) and s.step >= 2, timeout=180)
    assert cli("runs", "cancel", run_dir.name, runs_dir=runs_dir).returncode == 0
    status = wait_for(lambda: (s := read_status(run_dir)) and s.finished and s, timeout=60)
    # Both ranks stopped after the same step and saved: not the launcher's kill 30 s later.
    assert status.state == "cancelled" and status.exit_code == 0, status.error
    stopped_at = status.step
    assert stopped_at < 12 and (run_dir / "checkpoints" / f"checkpoint-{stopped_at}" / "optimizer.pt").exists()
    wait_for(lambda: (json.loads(cli("runs", "show", run_dir.name, "--json", runs_dir=runs_dir).stdout)["state"]
                      == "cancelled"), timeout=60)
    assert cli("runs", "resume", run_dir.name, runs_dir=runs_dir).returncode == 0
    status = wait_for(lambda: (s := read_status(run_dir)) and s.state == "succeeded" and s, timeout=300)
    assert status.step == 12
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == list(range(1, 13))


def test_engine_and_trainer_environment_are_chosen_as_documented(monkeypatch):
    from synaptic_tui.jobs import trainer_environment
    from trainers import engine

    assert engine.choose_engine({"engine": "auto", "platform": "cpu"}) == "transformers"
    assert engine.choose_engine({"engine": "transformers", "platform": "cuda"}) == "transformers"
    monkeypatch.setattr(engine, "cuda_available", lambda: True)
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None)
    assert engine.choose_engine({"engine": "auto", "platform": "auto"}) == "transformers"  # no unsloth here
    # Unsloth's QLoRA loads 4-bit unless the config says otherwise; transformers loads what it is given.
    assert engine.load_in_4bit({"model": {}}, "unsloth") is True
    assert engine.load_in_4bit({"model": {"load_in_4bit": None}}, "transformers") is False
    assert engine.load_in_4bit({"model": {"load_in_4bit": False}}, "unsloth") is False
    assert engine.load_in_4bit({"model": {"load_in_4bit": True}}, "transformers") is True

    env = trainer_environment({"platform": "cpu", "model": {"name": str(REPO)}, "dataset": {"path": SFT}},
                              base={"PATH": "/usr/bin"})
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and int(env["OMP_NUM_THREADS"]) >= 1
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_DATASETS_OFFLINE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    mine = trainer_environment({"platform": "cpu"}, base={"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"})
    assert (mine["OMP_NUM_THREADS"], mine["OMP_WAIT_POLICY"]) == ("3", "ACTIVE")  # the user's settings win
    assert "OMP_WAIT_POLICY" not in trainer_environment({"platform": "mlx"}, base={})
    assert "HF_HUB_OFFLINE" not in trainer_environment({"model": {"name": "Qwen/Qwen2.5-0.5B"}}, base={})


def test_auto_config_is_not_used_without_yes(demo_model, runs_dir):
    out = cli("train", "--config", SFT, "--model", str(demo_model), "--auto", runs_dir=runs_dir)
    assert out.returncode == 2
    assert "auto-config proposes:" in out.stderr and "training.per_device_train_batch_size" in out.stderr
    assert "re-run with --yes to launch with them" in out.stderr
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


def test_two_process_run_through_accelerate(demo_model, runs_dir):
    out = cli("train", "--config", SFT, "--model", str(demo_model), *FAST, "--wait",
              "--set", "training.num_processes=2", "--set", "training.max_steps=4", "--set", "training.save_steps=2",
              "--set", "dataset.test_size=0", runs_dir=runs_dir, timeout=300)
    assert out.returncode == 0, out.stderr
    run_dir = only_run(runs_dir)
    log = (run_dir / "train.log").read_text()
    assert "[rank1]" in log or log.count("[synaptic] 200 SFT rows") == 2, "two processes ran"
    assert json.loads((run_dir / "launch.json").read_text())["command"][2:4] == ["accelerate.commands.launch", "--multi_gpu"]
    rows = [r for r in metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4], "rank 0 alone writes metrics"
    # DDP: each step sees both processes' batches, so an epoch is half as many steps.
    assert rows[0]["epoch"] == pytest.approx(2 * 2 / 200)


def test_a_run_that_stops_learning_ends_failed_with_the_reason(demo_model, runs_dir):
    """A learning rate this high saturates the model within two steps: the gradient vanishes for good."""
    out = cli("train", "--config", SFT, "--model", str(demo_model), *FAST, "--wait",
              "--set", "training.max_steps=20", "--set", "training.learning_rate=100000",
              "--set", "training.max_grad_norm=1e9", "--set", "training.save_steps=10", runs_dir=runs_dir)
    assert out.returncode == 1
    run_dir = only_run(runs_dir)
    status = read_status(run_dir)
    assert status.state == "failed" and status.step < 10
    assert status.error.startswith("the gradient norm was 0 for 3 logged steps in a row (steps ")
    assert status.error.endswith("(training.stop_on_unhealthy: false to train on regardless)")
    assert "Traceback" not in status.error and status.error in out.stderr
    rows = [r for r in metrics(run_dir) if "grad_norm" in r]
    assert [r["grad_norm"] for r in rows[-3:]] == [0.0, 0.0, 0.0] and rows[-1]["step"] == status.step
    assert [w["step"] for w in status.extra["health_warnings"]] == [r["step"] for r in rows[-3:]]
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


def test_health_rules(tmp_path):
    """Each rule on its own: non-finite values end the run at once, a zero gradient after N steps, equal
    KTO log-probs only warn; with stop_on_unhealthy off, everything is a warning."""
    from synaptic_tui.runs import create_run
    from trainers.common import RunWriter, TrainingHealth, UnhealthyTraining

    def health(**training) -> TrainingHealth:
        run_dir = create_run(tmp_path / "runs", {"method": "kto", "training": training}, "kto", "h")
        return TrainingHealth(RunWriter(run_dir))

    rules = health()
    with pytest.raises(UnhealthyTraining, match=r"^diverged at step 4: the loss is nan"):
        rules.check(4, {"loss": float("nan"), "grad_norm": 1.0})
    with pytest.raises(UnhealthyTraining, match=r"^diverged at step 2: the gradient norm is inf"):
        health().check(2, {"loss": 1.0, "grad_norm": float("inf")})
    rules = health(unhealthy_steps=2)
    assert rules.check(1, {"loss": 1.0, "grad_norm": 0.0}) == "gradient norm is 0 at step 1"
    assert rules.check(2, {"loss": 1.0, "grad_norm": 0.5}) is None, "a step that learns resets the count"
    assert rules.check(3, {"loss": 1.0, "grad_norm": 0.0}) == "gradient norm is 0 at step 3"
    with pytest.raises(UnhealthyTraining, match=r"0 for 2 logged steps in a row \(steps 3-4\)"):
        rules.check(4, {"loss": 1.0, "grad_norm": 0.0})
    rules = health()
    for step in (1, 2):
        assert rules.check(step, {"loss": 1.0, "grad_norm": 1.0, "logps/chosen": -3.5, "logps/rejected": -3.5}) is None
    assert "may render to the same text" in rules.check(3, {"loss": 1.0, "grad_norm": 1.0, "logps/chosen": -3.5,
                                                              "logps/rejected": -3.5})
    relaxed = health(stop_on_unhealthy=False)
    assert relaxed.check(7, {"loss": float("inf")}) == "diverged at step 7: the loss is inf"
    assert relaxed.writer.status.extra["health_warnings"] == [{"step": 7, "message": "diverged at step 7: the loss is inf"}]


def test_a_template_of_another_family_adds_its_tokens_and_trains_their_rows(demo_model, runs_dir):
    """llama3-json on the ChatML demo model: its header tokens are added, trained, and exported with it."""
    out = cli("train", "--config", SFT, "--model", str(demo_model), *FAST, "--wait", "--json",
              "--set", "model.chat_template=llama3-json", "--set", "training.max_steps=2",
              "--set", "training.save_steps=2", "--set", "training.learning_rate=0.01", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    status = read_status(run_dir)
    assert status.extra["chat_template"]["added_tokens"] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    from transformers import AutoConfig, AutoTokenizer

    trained = AutoTokenizer.from_pretrained(run_dir / "final")
    added = trained.convert_tokens_to_ids(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    assert added == list(range(len(trained) - 3, len(trained)))
    adapter = json.loads((run_dir / "final" / "adapter_config.json").read_text())
    assert adapter["trainable_token_indices"] == {"embed_tokens": added}
    exported = cli("export", str(run_dir), "--format", "merged-16bit", "--json", runs_dir=runs_dir, timeout=600)
    assert exported.returncode == 0, exported.stderr
    merged = Path(json.loads(exported.stdout)["exports"]["merged-16bit"]["path"])
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.eos_token == "<|eot_id|>" and len(tokenizer) == AutoConfig.from_pretrained(merged).vocab_size
    import torch
    from safetensors.torch import load_file

    weights = load_file(merged / "model.safetensors")
    output = weights["lm_head.weight"]
    # The new end-of-turn token starts as the old one (<|im_end|>) on the output side.
    assert torch.equal(output[added[-1]], output[trained.convert_tokens_to_ids("<|im_end|>")])


def test_train_wait_exits_3_when_the_run_is_cancelled(demo_model, runs_dir):
    waiting = spawn("train", "--config", SFT, "--model", str(demo_model), *FAST, "--wait",
                    "--set", "training.max_steps=400", "--set", "training.save_steps=1000",
                    "--set", "dataset.test_size=0", runs_dir=runs_dir)
    try:
        run_dir = wait_for(lambda: list_runs(runs_dir) and list_runs(runs_dir)[0].path)
        wait_for(lambda: (s := read_status(run_dir)) and s.state == "running" and s.step >= 2)
        assert cli("runs", "cancel", run_dir.name, runs_dir=runs_dir).returncode == 0
        _, stderr = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 3, stderr
    status = read_status(run_dir)
    assert status.state == "cancelled" and status.last_checkpoint == f"checkpoint-{status.step}"
    assert re.search(rf"^cancelled step {status.step}/400  loss \d+\.\d{{4}}$", stderr, re.M), stderr


def test_ctrl_c_stops_following_and_leaves_the_run_going(demo_model, runs_dir):
    waiting = spawn("train", "--config", SFT, "--model", str(demo_model), *FAST, "--wait",
                    "--set", "training.max_steps=400", "--set", "training.save_steps=1000",
                    "--set", "dataset.test_size=0", runs_dir=runs_dir)
    run_dir = None
    try:
        run_dir = wait_for(lambda: list_runs(runs_dir) and list_runs(runs_dir)[0].path)
        at_interrupt = wait_for(lambda: (s := read_status(run_dir)) and s.state == "running" and s.step >= 1 and s)
        waiting.send_signal(signal.SIGINT)  # ctrl+c reaches the foreground command, not the detached trainer
        _, stderr = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, stderr
        assert f"stopped following; the run goes on: synaptic-tui runs show {run_dir.name}" in stderr
        # Still training after the follower left: the step count goes on from where it was.
        going = wait_for(lambda: (s := read_status(run_dir)) and s.step > at_interrupt.step + 2 and s)
        assert going.state == "running" and going.pid == at_interrupt.pid
        os.kill(going.pid, 0)
    finally:
        waiting.kill()
        if run_dir is not None:
            cli("runs", "cancel", run_dir.name, runs_dir=runs_dir)
    assert wait_for(lambda: (s := read_status(run_dir)) and s.finished and s).state == "cancelled"
