"""Snapshot tests: one per screen, on fixture runs with fixed times (TZ=UTC in conftest)."""

from __future__ import annotations

import pytest
from conftest import REPO

from synaptic_tui.app import SynapticApp
from synaptic_tui.doctor import Check
from synaptic_tui.services import Services

SIZE = (120, 40)


async def fixed_doctor(runs_dir):
    return [
        Check("Python", "ok", "3.11.7 (/usr/bin/python3)", {}),
        Check("Extras", "ok", "train: torch 2.13.0, transformers 5.23.0; mlx: mlx 0.32.4", {}),
        Check("CUDA", "info", "no NVIDIA GPU (nvidia-smi not found)", {}),
        Check("MLX", "ok", "Device(cpu, 0)", {}),
        Check("Disk", "ok", "120.0 GB free", {}),
        Check("Ollama", "info", "not reachable at http://127.0.0.1:11434", {}),
        Check("HF token", "warn", "not set", {}),
    ]


def fixed_preflight(config, runs_dir):
    from synaptic_tui.preflight import PreflightReport

    report = PreflightReport(parameters=320320, trainable_parameters=16384, memory_needed_gb=0.32,
                             memory_available_gb=23.1, memory_kind="RAM", rows=100,
                             token_stats={"rows": 100, "mean": 1105.0, "p50": 1080, "p95": 1585, "max": 1642,
                                          "max_length": 2048, "over_max": 0, "nothing_to_learn": 0},
                             chat_template={"name": "chatml-tools", "source": "builtin", "mask": "markers",
                                            "reason": "the model's own template drops tool definitions and tool "
                                                      "calls; using chatml-tools, the built-in for its chatml family"})
    report.add("info", "dataset", "100 rows, 87 tool calls")
    report.add("info", "template", "training with chatml-tools, not the model's own template: the model's own "
               "template drops tool definitions and tool calls; using chatml-tools, the built-in for its chatml family")
    return report


def cpu_only_capabilities():
    # What a CPU-only machine without llama.cpp can export, whatever this machine has.
    from synaptic_tui.exporting import EXPORT_FORMATS

    reasons = {f: None for f in EXPORT_FORMATS}
    reasons["merged-4bit"] = "needs a CUDA GPU (bitsandbytes 4-bit)"
    reasons["gguf-q4_k_m"] = "needs llama.cpp's quantizer (llama-quantize on PATH, or llama-cpp-python)"
    return reasons


@pytest.fixture
def app_on(monkeypatch):
    from synaptic_tui import exporting

    monkeypatch.setattr(exporting, "capabilities", cpu_only_capabilities)

    def make(runs_dir, cwd=None):
        monkeypatch.chdir(cwd or runs_dir.parent)
        return SynapticApp(Services.create(runs_dir, doctor=fixed_doctor, preflight=fixed_preflight))

    return make


def test_home_with_runs(snap_compare, app_on, sample_runs):
    assert snap_compare(app_on(sample_runs), terminal_size=SIZE)


def test_home_empty(snap_compare, app_on, runs_dir):
    assert snap_compare(app_on(runs_dir), terminal_size=SIZE)


def test_home_80x24(snap_compare, app_on, sample_runs):
    assert snap_compare(app_on(sample_runs), terminal_size=(80, 24))


def test_runs_screen(snap_compare, app_on, sample_runs):
    assert snap_compare(app_on(sample_runs), press=["r"], terminal_size=SIZE)


def test_help_screen(snap_compare, app_on, runs_dir):
    assert snap_compare(app_on(runs_dir), press=["f1"], terminal_size=SIZE)


def test_doctor_screen(snap_compare, app_on, runs_dir):
    async def run_before(pilot):
        await pilot.press("d")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(app_on(runs_dir), run_before=run_before, terminal_size=SIZE)


def test_new_run_screen(snap_compare, app_on):
    # From the repository root, as a user starts it, so the default config's paths read relative.
    async def run_before(pilot):
        await pilot.press("n")
        while pilot.app.screen.report is None:
            await pilot.pause(0.05)
        await pilot.pause()

    assert snap_compare(app_on(REPO / "runs", cwd=REPO), run_before=run_before, terminal_size=SIZE)


def test_upload_screen(snap_compare, app_on, sample_runs, monkeypatch):
    # Prefilled with the newest run that has checkpoints, its best checkpoint and a default repo id.
    monkeypatch.setenv("HF_USERNAME", "someone")
    assert snap_compare(app_on(sample_runs), press=["u"], terminal_size=SIZE)


def test_evaluate_screen(snap_compare, app_on, runs_dir):
    async def run_before(pilot):
        from textual.widgets import Input, Static

        await pilot.press("e")
        screen = pilot.app.screen
        url = screen.query_one("#url", Input)
        url.value = "http://127.0.0.1:9"  # discard port: refused at once, the same on every machine
        url.focus()
        await pilot.press("enter")
        for _ in range(100):
            await pilot.pause(0.05)
            if "not reachable" in str(screen.query_one("#reach", Static).render()):
                break

    assert snap_compare(app_on(REPO / "runs", cwd=REPO), run_before=run_before, terminal_size=SIZE)


def test_run_screen(snap_compare, app_on, sample_runs):
    (sample_runs / "20261121-101000-kto-demo-model" / "train.log").write_text(
        "[synaptic] 100 KTO rows from data/kto.jsonl: 57 desirable, 43 undesirable\n"
        "torch.OutOfMemoryError: CUDA out of memory\n")
    (sample_runs / "20261121-101000-kto-demo-model" / "metrics.jsonl").write_text(
        '{"step": 10, "loss": 0.4871, "kl": 0.25, "rewards/margins": 0.31, "rewards/chosen": 0.12, '
        '"rewards/rejected": -0.19, "learning_rate": 5e-05}\n'
        '{"step": 12, "loss": 0.4702, "kl": 0.02, "rewards/margins": 0.33, "learning_rate": 5e-05}\n')
    assert snap_compare(app_on(sample_runs), press=["r", "down", "enter"], terminal_size=SIZE)


def test_run_screen_80x24(snap_compare, app_on, sample_runs):
    (sample_runs / "20261121-101000-kto-demo-model" / "metrics.jsonl").write_text(
        '{"step": 10, "loss": 0.4871, "kl": 0.25, "rewards/margins": 0.31, "rewards/chosen": 0.12, '
        '"rewards/rejected": -0.19, "learning_rate": 5e-05}\n')
    assert snap_compare(app_on(sample_runs), press=["r", "down", "enter"], terminal_size=(80, 24))


def test_run_screen_sft_with_checkpoints(snap_compare, app_on, runs_dir):
    from conftest import write_run

    metrics = [{"step": s, "time": 1000.0 + s, "loss": 2.0 - s / 40, "learning_rate": 2e-4 * (1 - s / 60),
                "grad_norm": 0.5 + (s % 7) / 10} for s in range(1, 61)]
    metrics += [{"step": s, "eval_loss": 2.1 - s / 50} for s in (20, 40, 60)]
    metrics.sort(key=lambda r: r["step"])
    write_run(runs_dir, "20261120-091500-sft-demo-model",
              status={"state": "succeeded", "step": 60, "max_steps": 60, "engine": "transformers",
                      "started_at": "2026-11-20T09:15:00+00:00", "ended_at": "2026-11-20T09:21:30+00:00"},
              config={"training": {"save_steps": 20}}, checkpoints=(20, 40, 60), final=True, metrics=metrics)
    assert snap_compare(app_on(runs_dir), press=["r", "enter"], terminal_size=SIZE)


def test_compare_screen(snap_compare, app_on, runs_dir):
    from conftest import write_run

    for run_id, lr, slope in (("20261120-091500-sft-lr2e-4", 2e-4, 1 / 40), ("20261121-101000-sft-lr5e-5", 5e-5, 1 / 120)):
        write_run(runs_dir, run_id,
                  status={"state": "succeeded", "step": 60, "max_steps": 60, "best_checkpoint": "checkpoint-60"},
                  config={"training": {"learning_rate": lr, "max_steps": 60, "save_steps": 20}, "lora": {"r": 16}},
                  checkpoints=(20, 40, 60),
                  metrics=[{"step": s, "loss": 2.0 - s * slope} for s in range(1, 61)])
    assert snap_compare(app_on(runs_dir), press=["r", "space", "space", "v"], terminal_size=SIZE)


def test_pipeline_screen(snap_compare, app_on, runs_dir):
    from test_pipeline import write_pipeline_fixture

    from synaptic_tui.pipeline import read_pipeline, write_pipeline

    pipeline_dir = write_pipeline_fixture(runs_dir)
    state = read_pipeline(pipeline_dir)  # finished, so no duration depends on the clock
    state.state, state.ended_at, state.error = "failed", "2026-11-22T09:12:00+00:00", "kto: run failed: CUDA out of memory"
    state.stages[1].state, state.stages[1].ended_at = "failed", "2026-11-22T09:12:00+00:00"
    state.stages[1].error = "run 20261122-091000-kto-demo failed: CUDA out of memory"
    write_pipeline(pipeline_dir, state)
    assert snap_compare(app_on(runs_dir), press=["p", "enter"], terminal_size=SIZE)


def finished_pipeline(runs_dir):
    from test_pipeline import write_pipeline_fixture

    from synaptic_tui.pipeline import read_pipeline, write_pipeline

    pipeline_dir = write_pipeline_fixture(runs_dir)
    state = read_pipeline(pipeline_dir)  # finished, so no duration depends on the clock
    state.state, state.ended_at = "failed", "2026-11-22T09:12:00+00:00"
    state.stages[1].state, state.stages[1].ended_at = "failed", "2026-11-22T09:12:00+00:00"
    write_pipeline(pipeline_dir, state)
    return pipeline_dir


def test_pipelines_list_screen(snap_compare, app_on, runs_dir):
    finished_pipeline(runs_dir)
    assert snap_compare(app_on(runs_dir), press=["p"], terminal_size=SIZE)


def evals_fixture(root):
    from conftest import write_eval

    base = write_eval(root, "20261123-100000-demo-model", {"case-001": False, "case-002": True, "case-003": False})
    tuned = write_eval(root, "20261123-101000-demo-model-sft", {"case-001": True, "case-002": True, "case-003": False})
    return base, tuned


def test_past_evals_screen(snap_compare, app_on, runs_dir, monkeypatch):
    monkeypatch.setenv("SYNAPTIC_EVALS_DIR", str(runs_dir.parent / "evals"))
    evals_fixture(runs_dir.parent / "evals")
    assert snap_compare(app_on(runs_dir), press=["e", "ctrl+o"], terminal_size=SIZE)


def test_eval_results_screen(snap_compare, app_on, runs_dir):
    from synaptic_tui.screens.evaluate import EvalResultsScreen

    _, tuned = evals_fixture(runs_dir.parent / "evals")

    async def run_before(pilot):
        await pilot.app.push_screen(EvalResultsScreen(tuned))
        await pilot.pause(0.5)

    assert snap_compare(app_on(runs_dir), run_before=run_before, terminal_size=SIZE)


def behaviour_eval(root):
    """A finished eval of a behaviour set: tool-call and behaviour checks, by rule and by judge, one not scored."""
    import json

    from evaluator.runner import finish_eval

    eval_dir = root / "20261123-120000-demo-model-behaviour"
    eval_dir.mkdir(parents=True)
    settings = {"backend": "openai", "url": "http://127.0.0.1:9/v1", "model": "m", "prompt_set": "/behaviour.json",
                "case_ids": ["IH_vague_delete", "WA_pick_workspace", "ERA_no_results"], "judge_model": "judge",
                "judge_url": "http://127.0.0.1:9/v1"}
    (eval_dir / "eval.json").write_text(json.dumps({"eval_id": eval_dir.name, "state": "completed",
                                                    "settings": settings}))
    rule = lambda name, verdict, reason, kind="expectation": {  # noqa: E731
        "name": name, "kind": kind, "expected": True, "verdict": verdict, "reason": reason, "by": "rule",
        "rule": {"verdict": verdict, "reason": reason}, "judge": None, "not_scored": None}
    records = [
        {"id": "WA_pick_workspace", "tags": ["workspace_awareness"], "expected_tools": ["content_appendContent"],
         "prompt": [{"role": "user", "content": "Add today's harbour notes to the right workspace log."}],
         "notes": "Two workspaces: say which one and why, then append.", "response_type": "tool_text",
         "expected_response_type": "tool_text", "response": "Adding today's notes to the Orchard log now.",
         "calls": [{"name": "content_appendContent", "arguments": {"path": "Garden/log.md"}, "source": "native"}],
         "checks": [{"name": "expected_tools", "passed": True, "detail": "called ['content_appendContent']"}],
         "behavior": [rule("response_type", "pass", "tool_text", "response_type"),
                      {"name": "explains_choice", "kind": "expectation", "expected": True, "verdict": "fail",
                       "reason": "says where, never why", "by": "judge", "rule": None,
                       "judge": {"verdict": "fail", "reason": "says where, never why", "cached": False},
                       "not_scored": None},
                      rule("appends_content", "pass", "called content_appendContent")],
         "tool_verdict": "pass", "behavior_verdict": "fail", "verdict": "fail", "passed": False,
         "reasons": ["explains_choice: says where, never why (judge)"], "error": None, "latency_s": 1.25},
        {"id": "IH_vague_delete", "tags": ["clarification"], "expected_tools": None,
         "prompt": [{"role": "user", "content": "Delete the old drafts."}], "notes": "Ask which drafts.",
         "response_type": "text_only", "response": "Which drafts do you mean?", "calls": [], "checks": [],
         "behavior": [rule("does_not_call_tool", "pass", "no tool call"),
                      {"name": "asks_for_user_input", "kind": "expectation", "expected": True, "verdict": "pass",
                       "reason": "asks which drafts", "by": "judge", "rule": None,
                       "judge": {"verdict": "pass", "reason": "asks which drafts", "cached": True},
                       "not_scored": None}],
         "tool_verdict": None, "behavior_verdict": "pass", "verdict": "pass", "passed": True, "reasons": [],
         "error": None, "latency_s": 0.5},
        {"id": "ERA_no_results", "tags": ["error_recovery"], "expected_tools": None,
         "prompt": [{"role": "user", "content": "What did my notes say about the lighthouse?"}],
         "response_type": "text_only", "response": "Nothing about the lighthouse.", "calls": [], "checks": [],
         "behavior": [{"name": "hums_a_tune", "kind": "expectation", "expected": True, "verdict": "not scored",
                       "reason": "no rule or judge rubric for 'hums_a_tune'", "by": None, "rule": None,
                       "judge": None, "not_scored": "no rule or rubric"}],
         "tool_verdict": None, "behavior_verdict": "not scored", "verdict": "not scored", "passed": False,
         "reasons": [], "error": None, "latency_s": 0.75},
    ]
    (eval_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    finish_eval(eval_dir)
    return eval_dir


def test_eval_results_with_behaviour_checks(snap_compare, app_on, runs_dir):
    from synaptic_tui.screens.evaluate import EvalResultsScreen

    eval_dir = behaviour_eval(runs_dir.parent / "evals")

    async def run_before(pilot):
        await pilot.app.push_screen(EvalResultsScreen(eval_dir))
        await pilot.pause(0.5)

    assert snap_compare(app_on(runs_dir), run_before=run_before, terminal_size=SIZE)


def test_eval_compare_screen(snap_compare, app_on, runs_dir):
    from synaptic_tui.screens.evaluate import EvalCompareScreen

    base, tuned = evals_fixture(runs_dir.parent / "evals")

    async def run_before(pilot):
        await pilot.app.push_screen(EvalCompareScreen(base, tuned))
        await pilot.pause()

    assert snap_compare(app_on(runs_dir), run_before=run_before, terminal_size=SIZE)


def test_checkpoint_actions_dialog(snap_compare, app_on, sample_runs):
    assert snap_compare(app_on(sample_runs), press=["r", "down", "down", "enter", "enter"], terminal_size=SIZE)


def test_confirm_dialog(snap_compare, app_on, sample_runs):
    # Deleting a run asks first.
    assert snap_compare(app_on(sample_runs), press=["r", "x"], terminal_size=SIZE)


def test_more_steps_dialog(snap_compare, app_on, sample_runs):
    # R on a run that trained all its steps asks how many more to train.
    assert snap_compare(app_on(sample_runs), press=["r", "down", "down", "R"], terminal_size=SIZE)
