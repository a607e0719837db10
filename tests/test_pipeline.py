"""Pipelines: configs checked before anything runs; real stages on CPU, stopped and resumed without redoing work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import EXAMPLES, REPO, write_eval

from synaptic_tui.config import ConfigError, load_config
from synaptic_tui.pipeline import read_pipeline
from synaptic_tui.runs import read_status


def cli(*args: str, runs_dir: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synaptic_tui", *args, "--runs-dir", str(runs_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def write_config(path: Path, pipeline: dict, **top) -> Path:
    config = {"method": "sft", "platform": "cpu", "model": {"name": "demo", "max_seq_length": 2048},
              "dataset": {"path": str(EXAMPLES / "data" / "sft_tool_calls.jsonl"), "test_size": 0},
              "lora": {"r": 8, "alpha": 16}, **top, "pipeline": pipeline}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize("pipeline, expected", [
    ({"sfft": {}}, "pipeline.sfft: unknown key; did you mean 'sft'?"),
    ({"sft": {}, "eval": {"backend": "openai", "model": "m"}}, "pipeline.eval.prompt_set: is required"),
    ({"sft": {}, "export": {}, "upload": {}}, "pipeline.upload.repo_id: is required"),
    ({"sft": {}, "upload": {"repo_id": "me/x"}}, "pipeline.upload: uploads what the export stage writes"),
    ({"sft": {"training": {"learning_rate": -1}}}, "pipeline.sft.training.learning_rate: must be > 0"),
    ({"kto": {"start_from": "sft"}}, "pipeline.kto.start_from: is sft but the pipeline has no sft stage"),
    ({"kto": {"training": {"per_device_train_batch_size": 1}}},
     "pipeline.kto.training.per_device_train_batch_size: KTO needs at least 2 rows per batch"),
    ({"select": {}}, "pipeline.select: needs an sft or kto stage before it"),
    ({"sft": {}, "export": {"formats": ["gguf"]}}, "pipeline.export.formats.0: must be one of"),
    ({"sft": {}, "export": {"formats": ["lora"]}, "eval": {"prompt_set": "p.json"}},
     "pipeline.eval.backend: local serves the merged-16bit export"),
    ({}, "pipeline: has no stages"),
])
def test_bad_pipeline_configs_name_the_field_and_line(tmp_path, pipeline, expected):
    path = write_config(tmp_path / "pipe.yaml", pipeline)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert expected in message
    assert message.startswith(f"{path}:")  # with the line the YAML puts that key on


def test_bad_pipeline_config_on_the_cli_starts_nothing(tmp_path, runs_dir):
    path = write_config(tmp_path / "pipe.yaml", {"sft": {}, "upload": {"repo_id": "not a repo"}})
    out = cli("pipeline", "--config", str(path), runs_dir=runs_dir)
    assert out.returncode == 2
    assert "pipeline.upload.repo_id: must look like owner/name" in out.stderr
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []
    out = cli("pipeline", "--config", str(EXAMPLES / "configs" / "sft.yaml"), runs_dir=runs_dir)
    assert out.returncode == 2 and "pipeline: is required" in out.stderr


def test_stage_overrides_apply_to_their_stage_only(tmp_path):
    from synaptic_tui.config import stage_config

    config = load_config(write_config(tmp_path / "pipe.yaml", {
        "sft": {"training": {"max_steps": 3}},
        "kto": {"start_from": str(tmp_path), "dataset": {"path": "kto.jsonl"}, "training": {"per_device_train_batch_size": 4}},
    }, training={"learning_rate": 1e-4, "max_steps": 50}))
    sft, kto = stage_config(config, "sft"), stage_config(config, "kto")
    assert (sft["method"], sft["training"]["max_steps"], sft["training"]["learning_rate"]) == ("sft", 3, 1e-4)
    assert (kto["method"], kto["training"]["max_steps"], kto["training"]["per_device_train_batch_size"]) == ("kto", 50, 4)
    assert kto["dataset"]["path"] == str(tmp_path / "kto.jsonl")  # relative to the config file
    assert kto["model"]["name"] == str(tmp_path)
    assert "pipeline" not in sft and "pipeline" not in kto


def wait_for(predicate, timeout: float = 300, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def test_whole_chain_stopped_mid_kto_resumes_without_redoing_sft(demo_model, runs_dir, tmp_path):
    """SFT -> KTO from the SFT's best checkpoint merged -> best -> merged-16bit -> upload -> eval on a served model."""
    from hub_server import HubServer

    cases = json.loads((EXAMPLES / "prompts" / "tool_calling.json").read_text())[:2]
    (tmp_path / "two.json").write_text(json.dumps(cases))
    path = write_config(tmp_path / "pipe.yaml", {
        "sft": {"training": {"max_steps": 2, "save_steps": 2}},
        "kto": {"start_from": "sft", "dataset": {"path": str(EXAMPLES / "data" / "kto_tool_calls.jsonl")},
                "training": {"max_steps": 16, "save_steps": 2, "per_device_train_batch_size": 2,
                             "learning_rate": 5e-5}},
        "select": {"checkpoint": "best"},
        "export": {"formats": ["merged-16bit"]},
        "upload": {"repo_id": "me/pipeline-demo"},
        "eval": {"backend": "local", "prompt_set": "two.json", "max_tokens": 8, "concurrency": 2, "baseline": True},
    }, training={"logging_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 5e-4})
    token = "hf_pipelineToken0123456789"
    hub = HubServer(token=token).start()
    try:
        # The detached runner inherits this environment: its upload goes to the loopback Hub.
        out = cli("pipeline", "--config", str(path), "--json", runs_dir=runs_dir, env=hub.env)
        assert out.returncode == 0, out.stderr
        pipeline_dir = Path(json.loads(out.stdout)["path"])
        assert [s.name for s in read_pipeline(pipeline_dir).stages] == ["sft", "kto", "select", "export", "upload",
                                                                          "eval"]

        # Stop it once KTO has saved a checkpoint.
        def kto_checkpointed():
            kto = read_pipeline(pipeline_dir).stage("kto")
            status = read_status(runs_dir / kto.run_id) if kto.run_id else None
            return status is not None and status.last_checkpoint and kto.run_id
        kto_run = wait_for(kto_checkpointed, timeout=300)
        out = cli("pipeline", "cancel", pipeline_dir.name, runs_dir=runs_dir)
        assert out.returncode == 0, out.stderr
        state = wait_for(lambda: (s := read_pipeline(pipeline_dir)).finished and s)
        assert state.state == "cancelled"
        assert [(s.name, s.state) for s in state.stages][:3] == [("sft", "succeeded"), ("kto", "cancelled"),
                                                                 ("select", "pending")]
        sft_run = runs_dir / state.stage("sft").run_id
        sft_before = (read_status(sft_run).ended_at, (sft_run / "metrics.jsonl").read_text())
        stopped_at = read_status(runs_dir / kto_run)
        assert stopped_at.state == "cancelled" and stopped_at.step < 16
        # KTO started from the SFT run's best checkpoint, merged.
        start_from = yaml.safe_load((runs_dir / kto_run / "run.yaml").read_text())["model"]["name"]
        assert start_from.startswith(str(sft_run / "exports")) and start_from.endswith("merged-16bit")

        out = cli("pipeline", "resume", pipeline_dir.name, "--wait", runs_dir=runs_dir, env=hub.env)
        assert out.returncode == 0, out.stderr + (pipeline_dir / "pipeline.log").read_text()
    finally:
        hub.stop()
    state = read_pipeline(pipeline_dir)
    assert state.state == "succeeded"
    assert [(s.name, s.state) for s in state.stages] == [(n, "succeeded") for n in
                                                         ("sft", "kto", "select", "export", "upload", "eval")]
    # SFT was not run again; KTO went on in the same run, from its checkpoint, to its last step.
    assert (read_status(sft_run).ended_at, (sft_run / "metrics.jsonl").read_text()) == sft_before
    assert state.stage("kto").run_id == kto_run
    kto_status = read_status(runs_dir / kto_run)
    assert (kto_status.state, kto_status.step) == ("succeeded", 16)
    steps = [r["step"] for r in map(json.loads, (runs_dir / kto_run / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == list(range(1, 17)), "every KTO step once: resumed from its checkpoint, not started over"
    assert f"resumed from checkpoint-{stopped_at.step}" in (runs_dir / kto_run / "train.log").read_text()
    select = state.stage("select").result
    assert select["run_id"] == kto_run and select["checkpoint"] == kto_status.extra["best_checkpoint"]
    export = state.stage("export").result
    merged = Path(export["paths"]["merged-16bit"])
    assert merged == runs_dir / kto_run / "exports" / select["checkpoint"] / "merged-16bit"
    assert json.loads((merged / "export.json").read_text())["verify"]["loads"] is True
    upload = state.stage("upload").result
    assert upload["repo_id"] == "me/pipeline-demo" and len(upload["commits"]) == 2
    assert hub.commits[0]["files"]["model.safetensors"] == (merged / "model.safetensors").read_bytes()
    evaluation = state.stage("eval").result
    records = [json.loads(line) for line in (Path(evaluation["eval_dir"]) / "results.jsonl").read_text().splitlines()]
    assert Path(evaluation["eval_dir"]).parent == runs_dir / kto_run / "evals"
    assert sorted(r["id"] for r in records) == [c["id"] for c in cases]
    assert all(r["error"] is None and r["completion_tokens"] > 0 for r in records)
    # The base model was evaluated on the same cases, and the two compared.
    assert Path(evaluation["baseline_dir"]).parent == pipeline_dir / "evals"
    # The stage's numbers are the records' own: what passed, out of how many, against the base model's.
    passed = sum(r["passed"] for r in records)
    assert (evaluation["passed"], evaluation["total"], evaluation["pass_rate"]) == (passed, 2, round(passed / 2, 4))
    base = [json.loads(line) for line in (Path(evaluation["baseline_dir"]) / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in base) == [c["id"] for c in cases] and all(r["error"] is None for r in base)
    base_rate = round(sum(r["passed"] for r in base) / 2, 4)
    comparison = json.loads(Path(evaluation["comparison"]).read_text())
    assert comparison["overall"] == {"a": base_rate, "b": evaluation["pass_rate"],
                                     "delta": round(evaluation["pass_rate"] - base_rate, 4)}
    assert (evaluation["baseline_pass_rate"], evaluation["delta"]) == (base_rate, comparison["overall"]["delta"])
    shown = cli("pipeline", "show", pipeline_dir.name, runs_dir=runs_dir)
    assert "succeeded" in shown.stdout and f"checkpoint {select['checkpoint']}" in shown.stdout
    listed = json.loads(cli("pipeline", "list", "--json", runs_dir=runs_dir).stdout)
    assert [p["pipeline_id"] for p in listed] == [pipeline_dir.name]
    # The pipeline's directory is not mistaken for a run.
    runs = json.loads(cli("runs", "list", "--json", runs_dir=runs_dir).stdout)
    assert sorted(r["run_id"] for r in runs) == sorted([sft_run.name, kto_run])
    # The upload used the token, and nothing the pipeline wrote holds it: pipeline.log, pipeline.json, the
    # runs' logs and status files, the server logs.
    assert all(h == f"Bearer {token}" for h in hub.auth_headers if h is not None) and hub.commits
    assert (pipeline_dir / "pipeline.log").is_file() and (pipeline_dir / "pipeline.json").is_file()
    holding = [str(f) for f in runs_dir.rglob("*") if f.is_file() and token.encode() in f.read_bytes()]
    assert holding == [] and token not in shown.stdout + shown.stderr


def test_upload_stage_without_a_token_is_skipped_with_a_note(demo_model, runs_dir, tmp_path):
    path = write_config(tmp_path / "pipe.yaml", {
        "sft": {"training": {"max_steps": 2, "save_steps": 2}},
        "export": {"formats": ["lora"]},
        "upload": {"repo_id": "me/never-sent"},
    }, training={"logging_steps": 1, "per_device_train_batch_size": 2})
    out = cli("pipeline", "--config", str(path), "--wait", "--json", runs_dir=runs_dir)
    pipeline_dir = Path(json.loads(out.stdout)["path"])
    assert out.returncode == 0, (pipeline_dir / "pipeline.log").read_text()
    state = read_pipeline(pipeline_dir)
    assert [(s.name, s.state) for s in state.stages] == [("sft", "succeeded"), ("export", "succeeded"),
                                                         ("upload", "skipped")]
    assert "no Hugging Face token" in state.stage("upload").result["note"]


def write_pipeline_fixture(runs_dir: Path) -> Path:
    from conftest import write_run

    from synaptic_tui.pipeline import PipelineState, StageState, write_pipeline

    write_run(runs_dir, "20261122-090100-sft-demo", status={"state": "succeeded", "step": 20, "max_steps": 20,
                                                             "best_checkpoint": "checkpoint-20"}, checkpoints=(10, 20))
    write_run(runs_dir, "20261122-091000-kto-demo", status={"state": "running", "step": 4, "max_steps": 20},
              checkpoints=(2, 4))
    pipeline_dir = runs_dir / "20261122-090000-pipeline-demo"
    pipeline_dir.mkdir()
    state = PipelineState("20261122-090000-pipeline-demo", state="running", started_at="2026-11-22T09:00:00+00:00", stages=[
        StageState("sft", "succeeded", "20261122-090100-sft-demo", "2026-11-22T09:01:00+00:00", "2026-11-22T09:10:00+00:00",
                   result={"run_id": "20261122-090100-sft-demo", "best_checkpoint": "checkpoint-20", "steps": 20}),
        StageState("kto", "running", "20261122-091000-kto-demo", "2026-11-22T09:10:00+00:00"),
        StageState("select"),
    ])
    write_pipeline(pipeline_dir, state)
    return pipeline_dir


async def test_pipeline_screens_follow_the_stages_and_open_their_runs(runs_dir):
    from textual.widgets import DataTable, Static

    from synaptic_tui.app import SynapticApp
    from synaptic_tui.pipeline import write_pipeline
    from synaptic_tui.screens.pipelines import PipelineScreen, PipelinesScreen
    from synaptic_tui.screens.run_view import RunScreen
    from synaptic_tui.services import Services

    pipeline_dir = write_pipeline_fixture(runs_dir)
    app = SynapticApp(Services(runs_dir=runs_dir, refresh_seconds=0.2))
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("p")
        assert isinstance(app.screen, PipelinesScreen)
        table = app.screen.query_one(DataTable)
        # No launch record: never guessed dead, shown as written.
        assert [str(c) for c in table.get_row_at(0)][:3] == [pipeline_dir.name, "running",
                                                           "sft:succeeded kto:running select:pending"]
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, PipelineScreen)
        stages = screen.query_one("#stages", DataTable)
        assert [str(stages.get_cell(n, "state")) for n in ("sft", "kto", "select")] == ["succeeded", "running", "pending"]
        assert stages.get_cell("sft", "result") == "20261122-090100-sft-demo  best checkpoint-20"
        assert stages.get_cell("sft", "duration") == "9m00s"
        assert "1/3 stages" in str(screen.query_one("#pipeline-state", Static).render())

        # The runner moves on: the screen follows pipeline.json.
        from synaptic_tui.pipeline import read_pipeline
        state = read_pipeline(pipeline_dir)
        state.stages[1].state, state.stages[1].ended_at = "failed", "2026-11-22T09:12:00+00:00"
        state.stages[1].error = "run 20261122-091000-kto-demo failed: CUDA out of memory"
        state.state, state.error = "failed", "kto: run 20261122-091000-kto-demo failed: CUDA out of memory"
        write_pipeline(pipeline_dir, state)
        for _ in range(40):
            await pilot.pause(0.05)
            if stages.get_cell("kto", "state") == "failed":
                break
        assert stages.get_cell("kto", "state") == "failed"
        assert stages.get_cell("kto", "result").endswith("CUDA out of memory")
        assert "CUDA out of memory" in str(screen.query_one("#pipeline-state", Static).render())

        await pilot.press("c")  # not running any more: says so, asks nothing
        assert app.screen is screen
        await pilot.press("down", "enter")
        assert isinstance(app.screen, RunScreen) and app.screen.run_dir.name == "20261122-091000-kto-demo"


def test_eval_stage_serves_the_model_itself_and_evaluates_it(demo_model, runs_dir, tmp_path):
    cases = json.loads((EXAMPLES / "prompts" / "tool_calling.json").read_text())[:2]
    (tmp_path / "two.json").write_text(json.dumps(cases))
    path = write_config(tmp_path / "pipe.yaml", {"eval": {"backend": "local", "prompt_set": "two.json",
                                                          "max_tokens": 8, "concurrency": 2}})
    out = cli("pipeline", "--config", str(path), "--wait", "--json", runs_dir=runs_dir)
    pipeline_dir = Path(json.loads(out.stdout)["path"])
    assert out.returncode == 0, (pipeline_dir / "pipeline.log").read_text()
    result = read_pipeline(pipeline_dir).stage("eval").result
    eval_dir = Path(result["eval_dir"])
    assert eval_dir.parent == pipeline_dir / "evals"
    records = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines()]
    # A random-weight model answers gibberish: what matters is that a real server answered every case.
    assert sorted(r["id"] for r in records) == [c["id"] for c in cases]
    assert all(r["error"] is None and r["completion_tokens"] > 0 for r in records)
    passed = sum(r["passed"] for r in records)
    assert (result["passed"], result["total"], result["pass_rate"]) == (passed, 2, round(passed / 2, 4))
    assert "serving" in (pipeline_dir / "pipeline.log").read_text()


def test_serving_without_the_server_installed_says_what_to_install(tmp_path, monkeypatch):
    from synaptic_tui import serving

    monkeypatch.setattr(serving, "can_serve", lambda module: False)
    with pytest.raises(serving.ServerFailed, match=r"llama-cpp-python's server, which is not installed: .*pip install"):
        with serving.llama_cpp_server(tmp_path / "x.gguf", tmp_path / "serve.log"):
            pass
    with pytest.raises(serving.ServerFailed, match=r"mlx_lm.server, which is not installed: .*\[mlx\]"):
        with serving.mlx_server(tmp_path, tmp_path / "serve.log"):
            pass


async def test_the_eval_stage_opens_its_results_and_compares_with_the_base_model(runs_dir):
    from evaluator.runner import compare_evals
    from textual.widgets import DataTable, Static

    from synaptic_tui.app import SynapticApp
    from synaptic_tui.pipeline import PipelineState, StageState, write_pipeline
    from synaptic_tui.screens.evaluate import EvalCompareScreen, EvalResultsScreen
    from synaptic_tui.screens.pipelines import PipelineScreen
    from synaptic_tui.services import Services

    pipeline_dir = runs_dir / "20261123-090000-pipeline-demo"
    base = write_eval(pipeline_dir / "evals", "20261123-100000-base", {"c1": False, "c2": True, "c3": False})
    tuned = write_eval(runs_dir / "20261123-091000-kto-demo" / "evals", "20261123-101000-tuned",
                       {"c1": True, "c2": True, "c3": False})
    (pipeline_dir / "baseline_comparison.json").write_text(json.dumps(compare_evals(base, tuned)))
    write_pipeline(pipeline_dir, PipelineState(pipeline_dir.name, state="succeeded", stages=[StageState(
        "eval", "succeeded", result={"eval_dir": str(tuned), "baseline_dir": str(base), "pass_rate": 2 / 3,
                                     "baseline_pass_rate": 1 / 3, "delta": 1 / 3,
                                     "comparison": str(pipeline_dir / "baseline_comparison.json")})]))
    app = SynapticApp(Services(runs_dir=runs_dir, refresh_seconds=0.2))
    async with app.run_test(size=(140, 40)) as pilot:
        app.push_screen(PipelineScreen(pipeline_dir))
        await pilot.pause(0.2)
        screen = app.screen
        assert screen.query_one("#stages", DataTable).get_cell("eval", "result") == "pass rate 67% (base model 33%)"
        detail = str(screen.query_one("#stage-detail", Static).render())
        assert "against the base model: 67% vs 33% (+33%), 1 cases fixed, 0 broken" in detail
        assert "search" in detail and "(base 33%, +33%)" in detail
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, EvalResultsScreen) and app.screen.eval_dir == tuned
        assert app.screen.query_one("#results", DataTable).row_count == 3
        await pilot.press("escape")
        await pilot.pause(0.1)
        await pilot.press("v")
        await pilot.pause(0.2)
        assert isinstance(app.screen, EvalCompareScreen) and (app.screen.a, app.screen.b) == (base, tuned)
        assert "fixed[/]" not in str(app.screen.query_one("#compare-flips", Static).render())
        assert "c1" in str(app.screen.query_one("#compare-flips", Static).render())


def test_a_failed_stage_stops_the_pipeline_and_keeps_what_was_made(demo_model, runs_dir, tmp_path):
    (tmp_path / "two.json").write_text(json.dumps(json.loads((EXAMPLES / "prompts" / "tool_calling.json")
                                                             .read_text())[:2]))
    path = write_config(tmp_path / "pipe.yaml", {
        "sft": {"training": {"max_steps": 2, "save_steps": 2}},
        "export": {"formats": ["lora"]},
        "eval": {"backend": "openai", "url": "http://127.0.0.1:9/v1", "model": "m", "prompt_set": "two.json"},
    }, training={"logging_steps": 1, "per_device_train_batch_size": 2})
    out = cli("pipeline", "--config", str(path), "--wait", "--json", runs_dir=runs_dir)
    assert out.returncode != 0
    pipeline_dir = Path(json.loads(out.stdout)["path"])
    state = read_pipeline(pipeline_dir)
    assert state.state == "failed" and [(s.name, s.state) for s in state.stages] == [
        ("sft", "succeeded"), ("export", "succeeded"), ("eval", "failed")]
    assert state.error.startswith("eval: ") and "not reachable at http://127.0.0.1:9/v1" in state.error
    lora = Path(state.stage("export").result["paths"]["lora"])
    assert (lora / "adapter_model.safetensors").is_file()  # nothing produced is deleted


def test_a_pipeline_whose_runner_was_killed_resumes_following_its_training_run(demo_model, runs_dir, tmp_path):
    import signal

    path = write_config(tmp_path / "pipe.yaml", {"sft": {"training": {"max_steps": 40, "save_steps": 20}},
                                                 "select": {"checkpoint": "best"}},
                        training={"logging_steps": 1, "per_device_train_batch_size": 2})
    out = cli("pipeline", "--config", str(path), "--json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    pipeline_dir = Path(json.loads(out.stdout)["path"])
    sft_run = wait_for(lambda: (s := read_pipeline(pipeline_dir).stage("sft")) and s.run_id
                       and (status := read_status(runs_dir / s.run_id)) and status.step >= 2 and s.run_id)
    runner = json.loads((pipeline_dir / "launch.json").read_text())
    os.killpg(runner["pgid"], signal.SIGKILL)  # the runner only: the trainer has a session of its own
    from synaptic_tui.pipeline import reconcile_pipeline

    # Whoever looks next (the app, `pipeline show`) finds the runner gone.
    state = wait_for(lambda: (s := reconcile_pipeline(pipeline_dir)) and s.finished and s, timeout=60)
    assert state.state == "failed" and "vanished" in state.error
    out = cli("pipeline", "resume", pipeline_dir.name, "--wait", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr + (pipeline_dir / "pipeline.log").read_text()
    state = read_pipeline(pipeline_dir)
    assert state.state == "succeeded" and state.stage("sft").run_id == sft_run  # followed, not started again
    from synaptic_tui.runs import list_runs

    assert [r.run_id for r in list_runs(runs_dir)] == [sft_run]
    steps = [json.loads(line)["step"] for line in (runs_dir / sft_run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 41))
    assert state.stage("select").result["run_id"] == sft_run


def test_the_example_pipeline_config_is_valid():
    config = load_config(EXAMPLES / "pipeline.yaml")
    assert config.pipeline.stages() == ["sft", "kto", "select", "export", "eval"]
    assert config.pipeline.eval.backend == "local" and config.pipeline.eval.baseline is True
