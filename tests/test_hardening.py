"""The adversarial pass of issue #15, one regression test per attack: each asserts the message, the exit code,
and that nothing was lost or rewritten. Real trainers (the demo model), real loopback servers, real files.

The fuzz tests of hostile run directories are in test_hardening_fuzz.py.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO, copy_run, write_checkpoint_files, write_run
from ollama_server import OllamaServer

from synaptic_tui.runs import read_status

PROMPTS = EXAMPLES / "prompts" / "tool_calling.json"


def cli(*args: str, runs_dir: Path | None = None, timeout: float = 300, env: dict | None = None,
        preexec_fn=None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    extra = ["--runs-dir", str(runs_dir)] if runs_dir is not None else []
    return subprocess.run([sys.executable, "-m", "synaptic_tui", *args, *extra], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def wait_for(predicate, what: str, timeout: float = 240.0):
    """Poll until `predicate()` is truthy; a condition that never comes fails with what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run (not the lock's holder note), to show nothing was rewritten or lost."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "run.lock"}


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def running_run(runs_dir: Path, run_id: str, **status_fields) -> Path:
    """A run left `running`, as a trainer that died would leave it, launched on this host."""
    run_dir = write_run(runs_dir, run_id, status={"state": "running", "step": 3, "max_steps": 10,
                                                  "started_at": "2026-11-20T09:15:00+00:00", **status_fields})
    pid = dead_pid()
    (run_dir / "launch.json").write_text(json.dumps({"pid": pid, "pgid": pid, "start_marker": "1",
                                                     "host": socket.gethostname(), "command": ["python"],
                                                     "launched_at": "2026-11-20T09:15:00+00:00"}))
    return run_dir


# --- 1. one trainer per run ----------------------------------------------------------------------


@pytest.mark.slow
def test_two_resumes_at_once_start_exactly_one_trainer(trained_sft_run, runs_dir):
    run_dir = copy_run(trained_sft_run, runs_dir)
    command = [sys.executable, "-m", "synaptic_tui", "runs", "resume", run_dir.name, "--from", "checkpoint-2",
               "--runs-dir", str(runs_dir)]
    both = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outcomes = sorted((p.wait(timeout=120), *p.communicate()) for p in both)
    (won, won_out, _), (lost, _, lost_err) = outcomes
    assert (won, lost) == (0, 2), outcomes
    # The loser is refused by whichever guard it reaches first: the winner's lock, or (when the winner's
    # launch has already marked the run) the run's state.
    assert ("already has a trainer" in lost_err and "only one trainer may write a run" in lost_err) \
        or re.search(rf"{run_dir.name} is still (queued|running); cancel it first", lost_err), lost_err
    pid = int(won_out.rsplit("(pid ", 1)[1].split(")")[0])
    assert json.loads((run_dir / "launch.json").read_text())["pid"] == pid
    wait_for(lambda: status(run_dir)["state"] == "succeeded", "the resumed run to finish")
    # One trainer wrote the metrics: steps 3 and 4 once each after the kept 1-2, never interleaved.
    steps = [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-2:] == [3, 4]
    assert (run_dir / "train.log").read_text().count("resumed from checkpoint-2:") == 1


def test_a_trainer_started_by_hand_on_a_run_held_by_another_refuses_and_writes_nothing(runs_dir):
    from synaptic_tui import run_lock

    run_dir = write_run(runs_dir, "20261120-091500-sft-held", status={"state": "running", "step": 3})
    before = snapshot(run_dir)
    fd = run_lock.take(run_dir, role="trainer")  # this test process is "the other trainer"
    try:
        out = subprocess.run([sys.executable, "-m", "trainers.sft", "--run-dir", str(run_dir)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    finally:
        os.close(fd)
    assert out.returncode == 2, out.stderr
    assert f"already has a trainer (trainer pid {os.getpid()}" in out.stderr and "did not start" in out.stderr
    assert snapshot(run_dir) == before


# --- 2. one bad entry never takes the listing down --------------------------------------------------


def test_bad_entries_are_listed_unreadable_and_every_other_run_still_lists(runs_dir):
    good = write_run(runs_dir, "20261120-091500-sft-good", status={"step": 4, "max_steps": 4,
                                                                   "started_at": "2026-11-20T09:15:00+00:00"})
    as_dir = write_run(runs_dir, "20261120-091600-sft-status-dir")
    (as_dir / "status.json").unlink()
    (as_dir / "status.json").mkdir()
    typed = write_run(runs_dir, "20261120-091700-sft-typed", status={"started_at": 12})
    (runs_dir / "20261120-091800-sft-loop").symlink_to(runs_dir / "20261120-091800-sft-loop")
    huge_steps = write_run(runs_dir, "20261120-091900-sft-steps", checkpoints=(10,), final=True,
                           config={"training": {"save_steps": 10}},
                           metrics=[{"step": 10, "loss": 2.0}, {"step": 10**12, "epoch": 1.0},
                                    {"step": 10**23, "loss": 0.5}, {"step": -5, "loss": 0.1}])
    before = {p.name: snapshot(p) for p in (good, typed, huge_steps)}
    out = cli("runs", "list", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert "succeeded" in lines[good.name] and "succeeded" in lines[huge_steps.name]
    for name, reason in ((as_dir.name, "status.json: is a directory"), (typed.name, "started_at must be text"),
                         ("20261120-091800-sft-loop", "symlink loop")):
        assert "unreadable" in lines[name]
        assert f"{name} cannot be read: " in out.stderr and reason in out.stderr
    shown = cli("runs", "show", typed.name, "--json", runs_dir=runs_dir)
    assert shown.returncode == 0 and json.loads(shown.stdout)["problem"] == "status.json: started_at must be text (got 12)"
    steps = json.loads(cli("runs", "show", huge_steps.name, "--json", runs_dir=runs_dir).stdout)
    assert steps["best_checkpoint"] == "checkpoint-10"  # never `final` with the loss of step -5 or 10^23
    assert {p.name: snapshot(p) for p in (good, typed, huge_steps)} == before


def test_metric_steps_of_any_size_or_sign_never_reach_a_loop_bound_or_a_row():
    from synaptic_tui.monitor import RunMetrics
    from synaptic_tui.runs import Checkpoint

    metrics = RunMetrics("sft", save_steps=10)
    metrics.set_checkpoints([10, None])
    metrics.add([{"step": 10, "loss": 2.0}, {"step": 10**12, "loss": 1.0}, {"step": 10**23, "loss": 0.5},
                 {"step": -5, "loss": 0.1}, {"step": True, "loss": 0.0}, {"step": 11.0, "loss": 0.0},
                 {"step": 12, "loss": "low", "grad_norm": [1]}])
    assert metrics.rejected == 5 and metrics.last_step == 10**12  # 10^23, -5, true, 11.0: no usable step; 12 < 10^12
    rows, best = metrics.checkpoint_rows([Checkpoint("checkpoint-10", None, 10), Checkpoint("final", None, None)])
    assert [r.metrics["loss"] for r in rows] == [2.0, 1.0]
    assert best == "final"  # at step 10^12, the lowest loss a usable record logged


def test_a_failed_write_during_reconcile_is_reported_not_raised(runs_dir):
    run_dir = running_run(runs_dir, "20261120-091500-sft-dead")
    before = snapshot(run_dir)

    def tiny_files():  # writes of more than 100 bytes fail (EFBIG), as they would on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    out = cli("runs", "list", runs_dir=runs_dir, preexec_fn=tiny_files)
    assert out.returncode == 0, out.stderr
    assert f"warning: could not record {run_dir.name} as failed: file too large" in out.stderr
    assert "failed" in out.stdout  # what reconcile worked out is still shown
    assert snapshot(run_dir) == before and not list(run_dir.glob(".status.json.*"))


# --- 3. divergence -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [".inf", "1e308", "nan", ".nan", "1e309"])
def test_a_non_finite_learning_rate_is_refused_before_anything_is_written(runs_dir, capsys, rate):
    from synaptic_tui.cli import main

    code = main(["train", "--set", f"training.learning_rate={rate}", "--runs-dir", str(runs_dir), "--dry-run"])
    assert code == 2
    assert f"--set training.learning_rate={rate}: must be a finite number" in capsys.readouterr().err
    assert not list(runs_dir.iterdir())


def diverged_run(runs_dir: Path, run_id: str, first_bad: int) -> Path:
    records = [{"step": s, "loss": 2.0 / s if s < first_bad else 0.0,
                "grad_norm": 1.0 if s < first_bad else float("nan")} for s in (1, 2, 3)]
    return write_run(runs_dir, run_id, checkpoints=(1, 2, 3), final=True, metrics=records,
                     config={"training": {"save_steps": 1}},
                     status={"best_checkpoint": "checkpoint-3", "best_score": {"metric": "loss", "value": 0.0}})


def test_a_checkpoint_saved_after_divergence_is_never_best_nor_exported(runs_dir):
    run_dir = diverged_run(runs_dir, "20261120-091500-sft-diverged", first_bad=2)
    shown = json.loads(cli("runs", "show", run_dir.name, "--json", runs_dir=runs_dir).stdout)
    assert (shown["best_checkpoint"], shown["diverged_at"]) == ("checkpoint-1", 2)
    out = cli("export", run_dir.name, "--checkpoint", "checkpoint-3", "--format", "lora", runs_dir=runs_dir)
    assert out.returncode == 2
    assert "checkpoint-3 was saved after the run diverged at step 2" in out.stderr
    assert not (run_dir / "exports").exists()
    at_once = diverged_run(runs_dir, "20261120-091600-sft-diverged-at-once", first_bad=1)
    out = cli("export", at_once.name, "--format", "lora", runs_dir=runs_dir)
    assert out.returncode == 2 and "diverged at step 1" in out.stderr and "no checkpoint before that" in out.stderr


async def test_the_run_view_marks_diverged_checkpoints_and_stars_a_healthy_one(runs_dir):
    from synaptic_tui.app import SynapticApp
    from synaptic_tui.services import Services
    from synaptic_tui.widgets.checkpoint_table import BEST, DIVERGED, CheckpointTable

    run_dir = diverged_run(runs_dir, "20261120-091500-sft-diverged", first_bad=2)
    app = SynapticApp(Services.create(runs_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        app.show_run(run_dir)
        await pilot.pause(0.3)
        table = app.screen.query_one(CheckpointTable)
        marks = [table.get_row_at(i)[0] for i in range(table.row_count)]
        grads = [table.get_row_at(i)[6] for i in range(table.row_count)]
        state = str(app.screen.query_one("#run-state").render())
    assert marks == [BEST, DIVERGED, DIVERGED, DIVERGED] and grads[1:] == ["nan"] * 3
    assert "diverged at step 2" in state


@pytest.mark.slow
def test_export_refuses_an_adapter_with_nan_weights_for_that_reason(trained_sft_run, runs_dir):
    import torch
    from safetensors.torch import load_file, save_file

    run_dir = copy_run(trained_sft_run, runs_dir)
    weights = run_dir / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, weights)
    out = cli("export", run_dir.name, "--checkpoint", "checkpoint-4", "--format", "lora", runs_dir=runs_dir)
    assert out.returncode == 2, out.stderr
    assert f"checkpoint-4: {len(tensors)} of {len(tensors)} adapter tensors hold NaN or infinite values" in out.stderr
    assert "every LoRA B weight is zero" not in out.stderr
    assert not (run_dir / "exports" / "checkpoint-4").exists()


# --- 4. cancel is idempotent; resume of a finished run trains more ----------------------------------


@pytest.mark.slow
def test_cancel_twice_keeps_the_checkpoint_and_cancel_now_skips_it(trained_sft_run, runs_dir):
    from synaptic_tui.monitor import rank_run
    from synaptic_tui.runs import load_run

    run_dir = copy_run(trained_sft_run, runs_dir)
    out = cli("runs", "resume", run_dir.name, "--steps", "400", runs_dir=runs_dir)
    assert out.returncode == 0 and "training to step 404" in out.stdout, out.stderr
    wait_for(lambda: status(run_dir)["state"] == "running" and status(run_dir)["step"] >= 6, "training past step 5")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["learning_rate"] > 0 for r in records if r["step"] > 4 and "learning_rate" in r)
    # A scheduler and torch's launcher both signal: two SIGTERMs back to back are one stop.
    group = status(run_dir)["pgid"]
    os.killpg(group, signal.SIGTERM)
    os.killpg(group, signal.SIGTERM)
    wait_for(lambda: status(run_dir).get("stop_requested_at"), "the trainer to record the stop")
    again = cli("runs", "cancel", run_dir.name, runs_dir=runs_dir)
    assert again.returncode == 0 and "already stopping" in again.stdout
    wait_for(lambda: status(run_dir)["state"] == "cancelled", "the run to end cancelled")
    final = status(run_dir)
    assert final["last_checkpoint"] == f"checkpoint-{final['step']}"
    assert (run_dir / "checkpoints" / final["last_checkpoint"] / "trainer_state.json").is_file()
    assert final["best_checkpoint"] == rank_run(load_run(run_dir)).best  # what the run view stars
    saved = final["last_checkpoint"]

    out = cli("runs", "resume", run_dir.name, runs_dir=runs_dir)
    assert out.returncode == 0 and f"resumed from {saved}" in out.stdout, out.stderr
    wait_for(lambda: status(run_dir)["state"] == "running" and status(run_dir)["step"] > final["step"],
             "training past the checkpoint")
    now = cli("runs", "cancel", run_dir.name, "--now", runs_dir=runs_dir)
    assert now.returncode == 0 and f"stop now requested; the trainer ends without saving (the last checkpoint " \
                                   f"is {saved})" in now.stdout
    wait_for(lambda: status(run_dir)["state"] == "cancelled", "the run to stop at once")
    assert status(run_dir)["last_checkpoint"] == saved
    newest = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert f"checkpoint-{newest}" == saved and "stopping now, without a checkpoint" in (run_dir / "train.log").read_text()


def test_resume_of_a_finished_run_without_steps_is_refused_and_nothing_moves(trained_sft_run, runs_dir):
    run_dir = copy_run(trained_sft_run, runs_dir)
    before = snapshot(run_dir)
    out = cli("runs", "resume", run_dir.name, runs_dir=runs_dir)
    assert out.returncode == 2
    assert "trained all 4 steps: resuming from checkpoint-4 would train nothing" in out.stderr
    assert "Give --steps N to train N more steps" in out.stderr
    assert snapshot(run_dir) == before and not list(run_dir.glob("superseded-*"))


def test_a_truncated_checkpoint_is_refused_before_anything_is_launched(trained_sft_run, runs_dir):
    run_dir = copy_run(trained_sft_run, runs_dir)
    weights = run_dir / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(run_dir)
    out = cli("runs", "resume", run_dir.name, "--steps", "2", runs_dir=runs_dir)
    assert out.returncode == 2
    assert "checkpoint-4 cannot be resumed from: adapter_model.safetensors is truncated" in out.stderr
    assert snapshot(run_dir) == before and read_status(run_dir).state == "succeeded"


async def test_r_on_a_finished_run_asks_how_many_more_steps(runs_dir):
    from synaptic_tui.app import SynapticApp
    from synaptic_tui.screens.runs import MoreStepsScreen
    from synaptic_tui.services import Services

    run_dir = write_run(runs_dir, "20261120-091500-sft-done", status={"step": 20, "max_steps": 20})
    write_checkpoint_files(run_dir / "checkpoints" / "checkpoint-20", 20)
    app = SynapticApp(Services.create(runs_dir))
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("r")
        await pilot.pause(0.2)
        await pilot.press("R")
        await pilot.pause(0.2)
        assert isinstance(app.screen, MoreStepsScreen)
        assert "trained all 20 steps. Train how many more steps from checkpoint-20?" in str(
            app.screen.query_one("#more-steps-question").render())
        await pilot.press("escape")  # none: nothing launched
        await pilot.pause(0.1)
    assert not (run_dir / "launch.json").exists() and read_status(run_dir).state == "succeeded"


# --- 5. secrets in URLs ----------------------------------------------------------------------------


def test_credentials_in_an_eval_url_are_never_stored_or_printed(tmp_path):
    evals = tmp_path / "evals"
    with OllamaServer(reply={"content": "hi"}) as server:
        port = server.url.rsplit(":", 1)[1]
        url = f"http://bob:TOPSECRET1@127.0.0.1:{port}"
        out = cli("eval", "--url", url, "--model", "demo-model", "--prompt-set", str(PROMPTS), "--limit", "2",
                  "--evals-dir", str(evals), cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        [eval_dir] = evals.iterdir()
        stored = json.loads((eval_dir / "eval.json").read_text())["settings"]["url"]
        assert stored == f"http://***@127.0.0.1:{port}"
        resumed = cli("eval", "--resume", str(eval_dir), "--evals-dir", str(evals), cwd=tmp_path)
    assert resumed.returncode == 2 and "had credentials, which are never stored" in resumed.stderr
    assert "pass --url again" in resumed.stderr
    closed = f"http://bob:TOPSECRET3@127.0.0.1:{port}/?token=TOPSECRET4"  # the server has stopped
    down = cli("eval", "--url", closed, "--model", "m", "--prompt-set", str(PROMPTS), "--evals-dir", str(evals),
               cwd=tmp_path)
    assert down.returncode == 1 and f"not reachable at http://***@127.0.0.1:{port}/?token=***" in down.stderr
    written = b"".join(p.read_bytes() for p in evals.rglob("*") if p.is_file())
    printed = "".join(o.stdout + o.stderr for o in (out, resumed, down))
    assert b"TOPSECRET" not in written and "TOPSECRET" not in printed
    assert {"eval.json", "results.jsonl", "summary.json", "report.md"} <= {p.name for p in eval_dir.iterdir()}


def test_a_pipeline_refuses_a_credential_written_into_its_config(tmp_path, runs_dir):
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"pipeline:\n  eval:\n    backend: openai\n    model: m\n    prompt_set: {PROMPTS}\n"
                      "    url: http://bob:TOPSECRET@127.0.0.1:9/v1\n")
    out = cli("pipeline", "--config", str(config), runs_dir=runs_dir)
    assert out.returncode == 2
    assert "pipeline.eval.url: holds a credential (http://***@127.0.0.1:9/v1)" in out.stderr
    assert "${EVAL_TOKEN}" in out.stderr and "TOPSECRET" not in out.stderr
    assert not list(runs_dir.iterdir())


def test_url_redaction_and_references():
    from synaptic_tui.redact import expand_url, literal_credentials, redact_text, redact_url

    assert redact_url("http://user:tok@host:1/v1?model=m&token=t") == "http://***@host:1/v1?model=m&token=***"
    assert redact_url("http://127.0.0.1:1234/v1") == "http://127.0.0.1:1234/v1"
    assert redact_text("cannot connect to https://k@h/v1/models: refused") == "cannot connect to https://***@h/v1/models: refused"
    assert literal_credentials("http://u:tok@h/v1") and literal_credentials("http://h/v1?api_key=k")
    assert not literal_credentials("http://u:${TOKEN}@h/v1") and not literal_credentials("http://h/v1?key=${K}")
    assert expand_url("http://u:${TOKEN}@h/v1", {"TOKEN": "s"}) == "http://u:s@h/v1"
    with pytest.raises(ValueError, match=r"\$\{TOKEN\} in the URL is not set"):
        expand_url("http://u:${TOKEN}@h/v1", {})


def test_the_upload_preview_flags_a_local_base_model(runs_dir):
    run_dir = write_run(runs_dir, "20261120-091500-sft-local-base", checkpoints=(20,),
                        metrics=[{"step": 20, "loss": 1.0}])
    out = cli("upload", run_dir.name, "--repo-id", "you/model", "--dry-run", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    assert "warning   the base model is a local path (/models/demo-model)" in out.stdout
    assert "| checkpoint | checkpoint-20 (the run's best by loss 1) |" in out.stdout


# --- 6. evals that never end ---------------------------------------------------------------------------


def test_a_trickling_server_trips_the_case_deadline_derived_from_max_tokens(tmp_path):
    evals = tmp_path / "evals"
    with OllamaServer(trickle=0.2) as server:
        server.faults = ["trickle"]
        out = cli("eval", "--url", server.url, "--model", "demo-model", "--prompt-set", str(PROMPTS), "--limit", "1",
                  "--max-tokens", "2", "--timeout", "1", "--retries", "0", "--evals-dir", str(evals), cwd=tmp_path)
    assert out.returncode == 1, out.stderr  # no case got an answer
    [eval_dir] = evals.iterdir()
    [record] = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines()]
    # --timeout 1 plus 2 tokens at the slowest pace waited for (2 a second): 2 s for the whole answer.
    assert record["error"]["kind"] == "deadline"
    assert record["error"]["message"] == "no complete answer within the case deadline of 2 s (--case-timeout)"


def test_resume_asks_transient_errors_again_unless_told_not_to(tmp_path):
    evals = tmp_path / "evals"
    with OllamaServer(reply={"content": "hi"}) as server:
        server.faults = ["500", "500"]
        first = cli("eval", "--url", server.url, "--model", "demo-model", "--prompt-set", str(PROMPTS),
                    "--limit", "2", "--concurrency", "1", "--retries", "0", "--evals-dir", str(evals), cwd=tmp_path)
        assert first.returncode == 1
        [eval_dir] = evals.iterdir()
        kept = cli("eval", "--resume", str(eval_dir), "--retry-errors", "none", "--evals-dir", str(evals),
                   cwd=tmp_path)
        asked_before = len(server.requests)
        assert kept.returncode == 1 and asked_before == 2  # nothing asked again
        retried = cli("eval", "--resume", str(eval_dir), "--evals-dir", str(evals), cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert (summary["total"], summary["errors"]) == (2, 0) and len(server.requests) == 4
    lines = (eval_dir / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4  # the errored records are kept; the last record of a case is its result


# --- 7. pre-flight on hostile datasets --------------------------------------------------------------


def test_preflight_refuses_a_fifo_a_symlink_loop_an_oversized_row_and_bad_utf8(tmp_path, runs_dir, demo_model):
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    row = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    huge = tmp_path / "huge.jsonl"
    with huge.open("w") as handle:
        handle.write(row + "\n" + '{"messages": "' + "x" * (65 << 20) + '"}\n' + row + "\n")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes((row + "\n").encode() * 2 + b'{"messages": "caf\xe9"}\n')
    expected = {fifo: f"{fifo}: is not a regular file (a FIFO, socket or device)",
                loop: f"{loop}: is a symlink loop",
                huge: f"{huge}:2: row is larger than the 64 MB limit for one row",
                latin: f"{latin}:3: not UTF-8 text (byte 18 of the line: invalid continuation byte)"}
    for dataset, message in expected.items():
        out = cli("train", "--model", str(demo_model), "--dataset", str(dataset), "--dry-run", runs_dir=runs_dir,
                  timeout=120)  # a pre-flight that hangs on the FIFO fails here instead of blocking for ever
        assert out.returncode == 2 and message in out.stderr, (dataset, out.stderr)
    assert not list(runs_dir.iterdir())


def test_a_tool_schema_whose_required_is_a_string_is_refused_with_its_line(tmp_path):
    from trainers.data import DatasetError, check_rows

    tool = {"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": "query"}}}
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [tool]}
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match=rf"{path}:1: tools\[0\]\.parameters\.required must be a list of argument "
                                           r'names \(got "query"\)'):
        check_rows(path, "sft")


# --- 8. state is never rewritten on bad evidence ----------------------------------------------------------


def test_a_corrupt_status_of_a_succeeded_run_is_never_rewritten(runs_dir):
    run_dir = running_run(runs_dir, "20261120-091500-sft-corrupt")
    (run_dir / "status.json").write_text('{"state": "succeeded", "step": 60, "best_checkpoint": "checkp')
    (run_dir / "run.lock").write_text("")  # launched with a lock, and nobody holds it now
    before = snapshot(run_dir)
    listed = cli("runs", "list", runs_dir=runs_dir)
    assert listed.returncode == 0 and "unreadable" in listed.stdout and "not valid JSON" in listed.stderr
    for action in (["resume", run_dir.name, "--steps", "5"], ["cancel", run_dir.name]):
        out = cli("runs", *action, runs_dir=runs_dir)
        assert out.returncode == 2 and "cannot be read (status.json: not valid JSON" in out.stderr
    assert snapshot(run_dir) == before


def test_an_invalid_launch_record_neither_keeps_a_run_running_for_ever_nor_blocks_cancel(runs_dir):
    from synaptic_tui import run_lock

    gone = running_run(runs_dir, "20261120-091500-sft-gone")
    (gone / "launch.json").write_text('{"pid": "not a pid"}')
    (gone / "run.lock").write_text("")
    out = cli("runs", "show", gone.name, "--json", runs_dir=runs_dir)
    assert json.loads(out.stdout)["state"] == "failed"  # the lock is free: no trainer of it is alive
    held = running_run(runs_dir, "20261120-091600-sft-held")
    (held / "launch.json").write_text("[1, 2")
    fd = run_lock.take(held, role="trainer")
    try:
        out = cli("runs", "cancel", held.name, runs_dir=runs_dir)
    finally:
        os.close(fd)
    assert out.returncode == 2 and "is not running (state: running)" not in out.stderr
    assert "is not its trainer (or has not started yet); nothing was signalled" in out.stderr


def test_cancel_never_signals_a_process_group_that_is_not_the_runs_trainer(runs_dir):
    from synaptic_tui.jobs import process_start_marker

    stranger = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        run_dir = write_run(runs_dir, "20261120-091500-sft-stranger",
                            status={"state": "running", "step": 3, "pid": stranger.pid, "pgid": stranger.pid})
        (run_dir / "launch.json").write_text(json.dumps({
            "pid": stranger.pid, "pgid": stranger.pid, "start_marker": process_start_marker(stranger.pid),
            "host": socket.gethostname(), "command": ["sleep", "120"], "launched_at": "2026-11-20T09:15:00+00:00"}))
        before = snapshot(run_dir)
        out = cli("runs", "cancel", run_dir.name, runs_dir=runs_dir)
        assert out.returncode == 2 and "nothing was signalled" in out.stderr
        assert stranger.poll() is None and snapshot(run_dir) == before
    finally:
        stranger.kill()
        stranger.wait()


# --- 9. one best, and rows of their own step ------------------------------------------------------------


async def test_every_surface_names_the_same_best_checkpoint(runs_dir):
    from synaptic_tui.app import SynapticApp
    from synaptic_tui.exporting import resolve_checkpoint
    from synaptic_tui.modelcard import build_model_card
    from synaptic_tui.monitor import rank_run
    from synaptic_tui.pipeline import resolve_checkpoint as pipeline_select
    from synaptic_tui.runs import load_run
    from synaptic_tui.screens.upload import UploadScreen
    from synaptic_tui.services import Services
    from synaptic_tui.widgets.checkpoint_table import BEST, CheckpointTable

    # The final adapter is step 30's weights, as checkpoint-30 is: that one is named.
    run_dir = write_run(runs_dir, "20261120-091500-sft-best", checkpoints=(10, 20, 30), final=True,
                        config={"training": {"save_steps": 10}},
                        metrics=[{"step": s, "loss": 1.0 / s} for s in range(1, 31)])
    run = load_run(run_dir)
    best = rank_run(run).best
    assert best == "checkpoint-30"
    assert resolve_checkpoint(run, "best") == best and pipeline_select(run_dir, "best") == best
    assert json.loads(cli("runs", "show", run_dir.name, "--json", runs_dir=runs_dir).stdout)["best_checkpoint"] == best
    assert f"| checkpoint | {best} (the run's best by loss" in str(build_model_card(run, best, ["lora"], "a/b"))
    app = SynapticApp(Services.create(runs_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        app.show_run(run_dir)
        await pilot.pause(0.3)
        table = app.screen.query_one(CheckpointTable)
        starred = [table.get_row_at(i)[1] for i in range(table.row_count) if table.get_row_at(i)[0] == BEST]
        app.push_screen(UploadScreen(run_dir=run_dir))
        await pilot.pause(0.3)
        chosen = app.screen.query_one("#upload-checkpoint").value  # the form starts on the one it labels best
    assert starred == [best] and chosen == best


def test_a_cancel_time_checkpoint_never_shows_an_eval_loss_from_an_earlier_step():
    from synaptic_tui.monitor import rank_checkpoints
    from synaptic_tui.runs import Checkpoint

    records = [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 14)] + [{"step": 10, "eval_loss": 2.5}]
    records.sort(key=lambda r: r["step"])
    ranked = rank_checkpoints("sft", [Checkpoint("checkpoint-10", None, 10), Checkpoint("checkpoint-13", None, 13)],
                              records, save_steps=10)
    ten, thirteen = ranked.rows
    assert ten.metrics["eval_loss"] == 2.5 and "eval_loss" not in thirteen.metrics
    assert thirteen.metrics["loss"] == pytest.approx(1.7)  # its own step's training loss
    assert ranked.best == "checkpoint-10"  # the only one with an eval loss: train losses are not compared with it


# --- 10. smaller ones ----------------------------------------------------------------------------------


@pytest.mark.parametrize("yaml_text, message", [
    ("training:\n  max_steps: true\n", "config.yaml:2 training.max_steps: must be an integer (got True)"),
    ("training:\n  learning_rate: 1.0e-4\n  learning_rate: 2.0e-4\n",
     "config.yaml:3 training.learning_rate: given twice (first on line 2); keep one"),
    ("training:\n  learning_rate: nan\n", "config.yaml:2 training.learning_rate: must be a finite number (got 'nan')"),
])
def test_config_values_that_used_to_pass_or_mislead(tmp_path, runs_dir, capsys, yaml_text, message):
    from synaptic_tui.cli import main

    (tmp_path / "config.yaml").write_text(yaml_text)
    code = main(["train", "--config", str(tmp_path / "config.yaml"), "--runs-dir", str(runs_dir), "--dry-run"])
    assert code == 2 and capsys.readouterr().err.strip().endswith(message)
    assert not list(runs_dir.iterdir())


def test_an_evals_dir_that_cannot_be_written_is_a_message_not_a_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with OllamaServer(reply={"content": "hi"}) as server:
        out = cli("eval", "--url", server.url, "--model", "demo-model", "--prompt-set", str(PROMPTS),
                  "--evals-dir", str(blocker / "evals"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cannot write the eval under {blocker / 'evals'}: Not a directory" in out.stderr
