"""The opt-in Unsloth tier: the `engine: unsloth` path for real, in Unsloth's own environment.

Unsloth pins older transformers/trl/datasets than the `train` extra, so it lives in a virtual
environment of its own (README, "Tests"); its FastLanguageModel trains on a CPU there too
(slowly, bf16, its 4-bit load through bitsandbytes' CPU backend). Not part of the default run;
select it with `pytest -m unsloth` in that environment. Without unsloth these tests fail: they
never skip.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO

from synaptic_tui.runs import read_status

pytestmark = pytest.mark.unsloth


@pytest.fixture(autouse=True)
def unsloth_installed():
    if importlib.util.find_spec("unsloth") is None:
        pytest.fail("the unsloth tier needs unsloth installed (see README, Tests)")


def cli(*args: str, runs_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synaptic_tui", *args, "--runs-dir", str(runs_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


def test_unsloth_trains_with_its_4bit_load_and_its_run_exports(demo_model, runs_dir):
    out = cli("train", "--config", str(EXAMPLES / "configs" / "sft.yaml"), "--model", str(demo_model),
              "--set", "engine=unsloth", "--set", "training.max_steps=2", "--set", "training.save_steps=2",
              "--set", "dataset.test_size=0", "--yes", "--wait", "--json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    status = read_status(run_dir)
    assert (status.state, status.engine, status.step) == ("succeeded", "unsloth", 2)
    log = (run_dir / "train.log").read_text()
    assert "4-bit = True" in log  # load_in_4bit unset: Unsloth's QLoRA load
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2]
    assert (run_dir / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").exists()
    # What Unsloth saved is an ordinary PEFT adapter: exported, merged and verified like any run's.
    out = cli("export", run_dir.name, "--checkpoint", "final", "--format", "lora", "--format", "merged-16bit",
              "--json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    exports = json.loads(out.stdout)["exports"]
    assert exports["lora"]["verify"]["loads"] and exports["merged-16bit"]["verify"]["loads"]
    assert exports["merged-16bit"]["adapter_max_delta"] > 0
