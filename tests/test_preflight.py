"""Pre-flight findings, each on its own: memory, truncation, LoRA rank, output dir, disk, MLX sizes.

The demo model is real (config.json and safetensors on disk); what the machine has (free RAM,
GPU memory, disk) is set per test, so each finding is checked whatever this machine is.
"""

from __future__ import annotations

import json
import os
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from conftest import EXAMPLES

from synaptic_tui import preflight
from synaptic_tui.config import config_to_dict, load_config

GB = 1024**3


def config_for(demo_model: Path, *overrides: str) -> dict:
    return config_to_dict(load_config(EXAMPLES / "configs" / "sft.yaml",
                                      [f"model.name={demo_model}", "platform=cpu", *overrides]))


def findings(report, topic: str) -> list[str]:
    return [f"{f.level}: {f.message}" for f in report.findings if f.topic == topic]


@pytest.fixture
def machine(monkeypatch):
    """A CPU machine with 16 GB free RAM and 100 GB free disk, unless a test says otherwise."""
    state = {"ram": 16.0, "gpu": None, "disk": 100 * GB}
    monkeypatch.setattr(preflight, "available_ram_gb", lambda: state["ram"])
    monkeypatch.setattr(preflight, "free_gpu_memory_gb", lambda: state["gpu"])
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(state["disk"], 0, state["disk"]))
    return state


def test_parameter_count_comes_from_the_files(demo_model, runs_dir, machine):
    report = preflight.run_preflight(config_for(demo_model), runs_dir, count_tokens=False)
    expected = json.loads((demo_model / "synaptic_demo.json").read_text())["parameters"]
    assert report.parameters == expected and report.trainable_parameters > 0
    assert report.memory_kind == "RAM" and report.memory_available_gb == 16.0 and not report.errors


def test_too_little_memory_is_an_error_and_little_headroom_a_warning(demo_model, runs_dir, machine):
    report = preflight.run_preflight(config_for(demo_model), runs_dir, count_tokens=False)
    needed = report.memory_needed_gb
    machine["ram"] = needed / 2
    report = preflight.run_preflight(config_for(demo_model), runs_dir, count_tokens=False)
    assert findings(report, "memory") == [f"error: needs ~{needed:.1f} GB but only {needed / 2:.1f} GB RAM is free: "
                                          "lower per_device_train_batch_size or max_seq_length, or load_in_4bit"]
    machine["ram"] = needed * 1.1
    report = preflight.run_preflight(config_for(demo_model), runs_dir, count_tokens=False)
    assert findings(report, "memory")[0].startswith("warning: ") and "little headroom" in findings(report, "memory")[0]


def test_rows_longer_than_max_length_are_counted_with_the_real_tokenizer(demo_model, runs_dir, machine):
    # Counted as the trainer will tokenize (the run's template, chatml-tools here): cut at the median
    # row length, some rows are longer; at 64 every answer is gone.
    median = preflight.run_preflight(config_for(demo_model), runs_dir).token_stats["p50"]
    report = preflight.run_preflight(config_for(demo_model, f"model.max_seq_length={median}"), runs_dir)
    stats = report.token_stats
    assert stats["p50"] == median and 0 < stats["over_max"] < stats["rows"]
    assert any(f"{stats['over_max']} of {stats['rows']} rows are longer than max_seq_length {median}" in line
               for line in findings(report, "tokens"))
    report = preflight.run_preflight(config_for(demo_model, "model.max_seq_length=64"), runs_dir)
    assert any(line.startswith("error: every row's prompt is longer than max_seq_length 64")
               for line in findings(report, "tokens"))


def test_a_high_lora_rank_for_a_small_model_is_a_warning(demo_model, runs_dir, machine):
    report = preflight.run_preflight(config_for(demo_model, "lora.r=128", "lora.alpha=128"), runs_dir,
                                     count_tokens=False)
    assert any("rank 128 is high for a" in line and "8-32 is usual" in line for line in findings(report, "lora"))


def test_an_unwritable_runs_dir_is_an_error(demo_model, runs_dir, machine, monkeypatch):
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: False)
    report = preflight.run_preflight(config_for(demo_model), runs_dir, count_tokens=False)
    assert findings(report, "output") == [f"error: {runs_dir} is not writable"]


def test_low_disk_is_a_warning_and_no_room_for_checkpoints_an_error(demo_model, runs_dir, machine):
    machine["disk"] = 5 * GB
    report = preflight.run_preflight(config_for(demo_model), runs_dir, count_tokens=False)
    assert findings(report, "disk") == [f"warning: only 5.0 GB free in {runs_dir}"]
    machine["disk"] = GB // 10
    report = preflight.run_preflight(config_for(demo_model), runs_dir, count_tokens=False)
    assert findings(report, "disk")[0].startswith(f"error: 0.1 GB free in {runs_dir}, checkpoints need ~")


def test_mlx_runs_are_sized_for_unified_memory_and_what_they_train(demo_model, runs_dir, machine):
    machine["gpu"] = 80.0  # an NVIDIA card in the same box must not be what MLX is compared against
    lora = preflight.run_preflight(config_for(demo_model, "platform=mlx"), runs_dir, count_tokens=False)
    assert lora.memory_kind == ("unified memory" if sys.platform == "darwin" else "RAM")
    assert lora.memory_available_gb == 16.0
    fewer = preflight.run_preflight(config_for(demo_model, "platform=mlx", "lora.num_layers=1"), runs_dir,
                                    count_tokens=False)
    assert 0 < fewer.trainable_parameters < lora.trainable_parameters
    full = preflight.run_preflight(config_for(demo_model, "platform=mlx", "lora.fine_tune_type=full"), runs_dir,
                                   count_tokens=False)
    assert full.trainable_parameters == full.parameters and full.memory_needed_gb > lora.memory_needed_gb
    assert "trainable (full fine-tune)" in full.format()


def test_without_the_train_extra_the_report_says_what_to_install(demo_model, runs_dir, machine, monkeypatch):
    # The TUI's own install (no transformers, no torch): pre-flight still reports, it does not crash.
    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("transformers", "torch", "trl") else real(name, *a))
    report = preflight.run_preflight(config_for(demo_model), runs_dir)
    assert report.token_stats is None
    assert any("training needs the train extra" in line for line in findings(report, "extras"))


@pytest.mark.parametrize(("overrides", "hidden", "topic", "message"), [
    (["platform=cuda"], (), "platform",
     "error: platform is cuda but no NVIDIA GPU was found (nvidia-smi missing or failing)"),
    (["platform=mlx"], ("mlx_lm",), "extras",
     "error: platform mlx needs the mlx extra: pip install -c .ci/constraints.txt -e '.[mlx]'"),
    (["engine=unsloth"], ("unsloth",), "engine",
     "error: engine is unsloth but unsloth is not installed in this environment (it needs its own: "
     "pip install -c .ci/constraints.txt -e '.[unsloth]')"),
])
def test_a_platform_this_machine_lacks_is_refused(demo_model, runs_dir, machine, monkeypatch, overrides, hidden,
                                                   topic, message):
    # machine: no GPU; `hidden` packages are made absent whatever this environment has installed.
    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec",
                        lambda name, *a: None if name in hidden else real(name, *a))
    report = preflight.run_preflight(config_for(demo_model, *overrides), runs_dir, count_tokens=False)
    assert findings(report, topic) == [message]
    assert [f.message for f in report.errors] == [message.removeprefix("error: ")]


def test_a_cuda_run_on_a_machine_without_a_gpu_stops_with_exit_2(demo_model, runs_dir, tmp_path):
    import subprocess

    from conftest import REPO

    # This machine as one without NVIDIA's tools, whatever it has: PATH without nvidia-smi.
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "nvidia-smi").exists())
    out = subprocess.run([sys.executable, "-m", "synaptic_tui", "train", "--config", str(EXAMPLES / "configs" / "sft.yaml"),
                          "--model", str(demo_model), "--platform", "cuda", "--yes", "--runs-dir", str(runs_dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": path})
    assert out.returncode == 2, out.stderr
    assert "platform is cuda but no NVIDIA GPU was found" in out.stderr
    assert "pre-flight found 1 error(s); nothing was launched" in out.stderr
    assert list(runs_dir.iterdir()) == []


def recorded_nvidia_smi(bin_dir: Path, output: str) -> None:
    """nvidia-smi as pre-flight asks it, answering `output`; any other question is refused as the real one does."""
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n"
                      'if [ "$*" != "--query-gpu=memory.free --format=csv,noheader,nounits" ]; then\n'
                      '  echo "Invalid combination of input arguments." >&2; exit 2\nfi\n'
                      f"cat <<'OUT'\n{output}OUT\n")
    script.chmod(0o755)


@pytest.mark.parametrize(("output", "free_gb"), [
    ("81004\n", 81004 / 1024),  # one H100 80GB, idle
    ("1536\n80512\n12\n", 80512 / 1024),  # several: the emptiest one is where a run would go
    ("[N/A]\n24161\n", 24161 / 1024),  # a board that reports no figure is skipped
    ("[N/A]\n", None),
])
def test_free_gpu_memory_from_recorded_nvidia_smi_output(tmp_path, monkeypatch, output, free_gb):
    recorded_nvidia_smi(tmp_path / "bin", output)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert preflight.free_gpu_memory_gb() == free_gb


def test_a_failing_nvidia_smi_means_no_gpu(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    # A driver/library mismatch: the message (with a version number in it) and exit code 18, no figures.
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\necho 'Failed to initialize NVML: Driver/library "
                                                  "version mismatch'\necho 'NVML library version: 580.65'\n"
                                                  "exit 18\n")
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert preflight.free_gpu_memory_gb() is None


def test_a_cuda_run_is_sized_against_the_gpu_nvidia_smi_reports(demo_model, runs_dir, tmp_path, monkeypatch):
    recorded_nvidia_smi(tmp_path / "bin", "1536\n80512\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(preflight, "available_ram_gb", lambda: 16.0)
    report = preflight.run_preflight(config_for(demo_model, "platform=cuda"), runs_dir, count_tokens=False)
    assert (report.memory_kind, report.memory_available_gb) == ("GPU", 80512 / 1024)
    assert findings(report, "platform") == []
