"""Export and upload, for real: a trained demo run exported on CPU, uploaded to a loopback Hub.

The Hub itself cannot be reached here: tests/hub_server.py speaks the endpoints
huggingface_hub calls for create_repo and upload_folder (see its docstring).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, copy_run
from hub_server import HubServer

from synaptic_tui.exporting import export_dir, list_exports, read_export

SECRET = "hf_loopbackSecretToken1234567890"


def cli(*args: str, runs_dir: Path, env: dict[str, str] | None = None, timeout: float = 400,
        cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synaptic_tui", *args, "--runs-dir", str(runs_dir)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def run_dir(trained_sft_run, runs_dir) -> Path:
    return copy_run(trained_sft_run, runs_dir)


def no_staging_left(run_dir: Path) -> bool:
    root = run_dir / "exports"
    return not any(p.name.startswith(".") for p in root.rglob("*")) if root.exists() else True


@pytest.mark.slow
def test_lora_and_merged_exports_are_verified(run_dir, runs_dir):
    out = cli("export", run_dir.name, "--checkpoint", "best", "--format", "merged-16bit", "--format", "lora",
              "--json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    best = json.loads((run_dir / "status.json").read_text())["best_checkpoint"]
    assert data["checkpoint"] == best and set(data["exports"]) == {"lora", "merged-16bit"}

    lora = read_export(export_dir(run_dir, best, "lora"))
    assert lora["verify"]["loads"] and lora["verify"]["chat_template"] and lora["verify"]["tools_in_template"]
    adapter_config = json.loads((export_dir(run_dir, best, "lora") / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == lora["base_model"]
    assert not (export_dir(run_dir, best, "lora") / "optimizer.pt").exists()

    merged_dir = export_dir(run_dir, best, "merged-16bit")
    merged = read_export(merged_dir)
    assert merged["dtype"] == "bfloat16" and merged["adapter_max_delta"] > 0
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "chat_template.jinja").is_file()
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert [e["format"] for e in list_exports(run_dir)] == ["lora", "merged-16bit"]
    assert no_staging_left(run_dir)

    # The merged weights really differ from the base: the adapter was merged, not dropped.
    check = ("import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
             "a = AutoModelForCausalLM.from_pretrained(sys.argv[1]).state_dict()\n"
             "b = AutoModelForCausalLM.from_pretrained(sys.argv[2]).state_dict()\n"
             "print(max(float((a[k].float() - b[k].float()).abs().max()) for k in a if 'q_proj' in k))")
    base = lora["base_model"]
    diff = subprocess.run([sys.executable, "-c", check, str(merged_dir), base], capture_output=True, text=True,
                          check=True)
    assert float(diff.stdout.strip()) > 0


def test_merged_4bit_without_cuda_fails_before_any_work(run_dir, monkeypatch):
    import torch

    from trainers.export import ExportError, make_plan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what this test means on a GPU box too
    with pytest.raises(ExportError, match="merged-4bit needs a CUDA GPU"):
        make_plan(run_dir, "best", ["lora", "merged-4bit"])
    # Not even the lora that could have been made.
    assert not (run_dir / "exports").exists() or not any((run_dir / "exports").rglob("export.json"))
    assert no_staging_left(run_dir)


def test_the_export_cli_refuses_up_front_with_exit_2(run_dir, runs_dir):
    # A CPU-only machine (CI): the same refusal through the command line, before any work.
    out = cli("export", run_dir.name, "--format", "lora", "--format", "merged-4bit", runs_dir=runs_dir,
              env={"CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 2 and "merged-4bit needs a CUDA GPU" in out.stderr
    assert not any((run_dir / "exports").rglob("export.json")) if (run_dir / "exports").exists() else True


def test_bad_checkpoint_and_format_names_are_clear_errors(run_dir, runs_dir):
    out = cli("export", run_dir.name, "--checkpoint", "checkpoint-99", "--format", "lora", runs_dir=runs_dir)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"synaptic-tui: {run_dir.name} has no checkpoint 'checkpoint-99' "
                                  "(checkpoints: checkpoint-2, checkpoint-4, final)")
    out = cli("export", run_dir.name, "--format", "gguf", runs_dir=runs_dir)
    assert out.returncode == 2 and "unknown export format 'gguf'" in out.stderr
    out = cli("export", run_dir.name, runs_dir=runs_dir)
    assert out.returncode == 2 and "no export format given" in out.stderr
    assert not (run_dir / "exports").exists() or not any((run_dir / "exports").rglob("export.json"))


def test_an_export_that_does_not_fit_on_disk_is_refused_up_front(run_dir, monkeypatch):
    from collections import namedtuple

    from trainers import export

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100_000, 100_000))
    with pytest.raises(export.ExportError, match=r"not enough free disk in .*exports: merged-16bit needs about"):
        export.make_plan(run_dir, "best", ["merged-16bit"])
    assert not any((run_dir / "exports").iterdir())


def test_a_failed_verification_leaves_nothing_half_written(run_dir, runs_dir):
    # An adapter whose LoRA B weights are all zero merges into the base model unchanged: refused.
    from safetensors.torch import load_file, save_file

    best = json.loads((run_dir / "status.json").read_text())["best_checkpoint"]
    weights_path = run_dir / "checkpoints" / best / "adapter_model.safetensors"
    weights = load_file(weights_path)
    save_file({k: v.zero_() if "lora_B" in k else v for k, v in weights.items()}, weights_path)
    out = cli("export", run_dir.name, "--format", "merged-16bit", "--json", runs_dir=runs_dir)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "zero" in (out.stdout + out.stderr).lower()
    assert no_staging_left(run_dir) and not any((run_dir / "exports").rglob("export.json"))


def test_llama_cpp_dir_is_used_when_set_and_a_wrong_one_is_named(tmp_path, monkeypatch):
    from trainers.export import ExportError
    from trainers.gguf import find_converter

    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ExportError, match=r"LLAMA_CPP_DIR=.*nowhere has no convert_hf_to_gguf.py"):
        find_converter()
    checkout = tmp_path / "llama.cpp"
    (checkout / "conversion").mkdir(parents=True)
    (checkout / "gguf-py" / "gguf").mkdir(parents=True)
    (checkout / "convert_hf_to_gguf.py").write_text("# llama.cpp's converter\n")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(checkout))
    assert find_converter() == checkout


@pytest.mark.slow
def test_upload_sends_verified_files_and_card_to_the_hub(run_dir, runs_dir, tmp_path):
    with HubServer(token=SECRET) as hub:
        out = cli("upload", run_dir.name, "--repo-id", "me/demo-sft", "--format", "lora", "--format", "merged-16bit",
                  runs_dir=runs_dir, env=hub.env)
        assert out.returncode == 0, out.stderr
        assert hub.repos["me/demo-sft"]["private"] is True
        received: dict[str, bytes] = {}
        for commit in hub.commits:
            received.update(commit["files"])
        checkpoint = json.loads((run_dir / "status.json").read_text())["best_checkpoint"]
        lora_dir = export_dir(run_dir, checkpoint, "lora")
        merged_dir = export_dir(run_dir, checkpoint, "merged-16bit")
        assert received["adapter_model.safetensors"] == (lora_dir / "adapter_model.safetensors").read_bytes()
        assert received["merged-16bit/model.safetensors"] == (merged_dir / "model.safetensors").read_bytes()
        assert "export.json" not in received and "merged-16bit/export.json" not in received
        card = received["README.md"].decode()
        assert "library_name: peft" in card and "## Training curves" in card and checkpoint in card
        assert [c["message"] for c in hub.commits][-1] == "Model card (synaptic-tui)"
        for commit in hub.commits:
            assert f"{hub.url}/me/demo-sft/commit/{commit['oid']}" in out.stdout
        assert all(h == f"Bearer {SECRET}" for h in hub.auth_headers if h is not None)
        assert hub.connections < len(hub.requests)  # huggingface_hub reused kept-alive connections
    assert_secret_nowhere(out, runs_dir)


def test_upload_retries_transient_errors_and_explains_a_rejected_token(run_dir, runs_dir):
    with HubServer(token=SECRET, lfs=False, fault_endpoint="commit") as hub:
        # Built by a first export; then the upload meets two 5xx on its commit and goes on.
        assert cli("export", run_dir.name, "--format", "lora", runs_dir=runs_dir).returncode == 0
        hub.faults = ["503", "500"]
        out = cli("upload", run_dir.name, "--repo-id", "me/retry", "--format", "lora", runs_dir=runs_dir,
                  env=hub.env)
        assert out.returncode == 0, out.stderr
        assert "retrying (1/3)" in out.stderr and "retrying (2/3)" in out.stderr
        assert len(hub.commits) == 2  # the adapter, then the card
        bad = cli("upload", run_dir.name, "--repo-id", "me/retry", "--format", "lora", runs_dir=runs_dir,
                  env={**hub.env, "HF_TOKEN": SECRET + "-revoked"})
    assert bad.returncode == 1
    assert "the Hub rejected the token (401) from HF_TOKEN" in bad.stderr
    assert_secret_nowhere(out, runs_dir)
    assert SECRET not in bad.stdout + bad.stderr


def test_upload_needs_a_valid_repo_id_before_any_work(run_dir, runs_dir):
    out = cli("upload", run_dir.name, "--repo-id", "not a repo", "--format", "lora", runs_dir=runs_dir)
    assert out.returncode == 2 and "repo id must look like owner/name" in out.stderr
    out = cli("upload", run_dir.name, "--format", "lora", runs_dir=runs_dir)
    assert out.returncode == 2 and "no repo id" in out.stderr and "HF_USERNAME" in out.stderr
    assert not (run_dir / "exports").exists()


def test_upload_dry_run_shows_files_and_card_without_network(run_dir, runs_dir):
    out = cli("upload", run_dir.name, "--format", "lora", "--format", "gguf-q8_0", "--dry-run", "--json",
              runs_dir=runs_dir, env={"HF_USERNAME": "someone", "HF_TOKEN": SECRET,
                                      "HF_ENDPOINT": "http://127.0.0.1:9"})  # nothing listens there
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["repo_id"] == "someone/demo-model-sft" and plan["private"] is True and plan["dry_run"]
    assert plan["to_export"] == ["lora", "gguf-q8_0"] and plan["token"] == "HF_TOKEN"
    assert "ollama run hf.co/someone/demo-model-sft:Q8_0" in plan["model_card"]
    assert SECRET not in out.stdout + out.stderr
    assert not (run_dir / "exports").exists()


def assert_secret_nowhere(out: subprocess.CompletedProcess, runs_dir: Path) -> None:
    assert SECRET not in out.stdout + out.stderr
    for path in Path(runs_dir).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_gguf_exports_are_read_back_with_template_and_modelfile(run_dir, runs_dir):
    # The converter comes from the pinned llama-cpp-python sdist (pip download, once per cache).
    out = cli("export", run_dir.name, "--format", "gguf-q8_0", "--format", "gguf-f16", "--json", runs_dir=runs_dir,
              timeout=900)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for fmt, size_type in (("gguf-f16", "f16"), ("gguf-q8_0", "q8_0")):
        record = data["exports"][fmt]
        verify = record["verify"]
        assert (verify["architecture"], verify["tokenizer_model"], verify["pre_tokenizer"]) == ("llama", "gpt2", "gpt-2")
        assert verify["tensors"] == 21 and verify["chat_template"] and verify["tools_in_template"]
        assert record["pre_tokenizer_fallback"] == "gpt-2"
        folder = Path(record["path"])
        gguf = folder / f"demo-model-sft-{size_type}.gguf"
        assert gguf.read_bytes()[:4] == b"GGUF"
        modelfile = (folder / f"Modelfile.{size_type}").read_text()
        assert f"FROM ./{gguf.name}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
        assert record["ollama_create"] == f"cd {folder} && ollama create demo-model-sft -f Modelfile.{size_type}"
    # f16 is about twice the size of q8_0; no temporary merge or staging is left behind.
    assert data["exports"]["gguf-f16"]["size_bytes"] > 1.5 * data["exports"]["gguf-q8_0"]["size_bytes"]
    assert no_staging_left(run_dir) and not (run_dir / "exports" / data["checkpoint"] / "merged-16bit").exists()


def test_k_quants_without_a_quantizer_say_what_to_install(run_dir, monkeypatch):
    from trainers import export

    monkeypatch.setattr(export, "quantizer_available", lambda: None)  # no llama-quantize, no llama-cpp-python
    with pytest.raises(export.ExportError, match="gguf-q4_k_m needs llama.cpp's quantizer") as err:
        export.make_plan(run_dir, "best", ["gguf-q4_k_m"])
    assert "llama-cpp-python" in str(err.value)
    assert not (run_dir / "exports").exists() or not any((run_dir / "exports").rglob("*.gguf"))


async def test_upload_form_previews_the_card_exports_and_uploads(run_dir, runs_dir, monkeypatch):
    from textual.widgets import Input, Log, Markdown, SelectionList

    from synaptic_tui.app import SynapticApp
    from synaptic_tui.screens.new_run import ConfirmScreen
    from synaptic_tui.screens.upload import UploadScreen
    from synaptic_tui.services import Services

    checkpoint = json.loads((run_dir / "status.json").read_text())["best_checkpoint"]
    with HubServer(token=SECRET) as hub:
        hub.configure(monkeypatch)
        monkeypatch.setenv("HF_USERNAME", "me")
        app = SynapticApp(Services.create(runs_dir))
        async with app.run_test(size=(120, 40)) as pilot:
            await app.push_screen(UploadScreen(run_dir=run_dir, checkpoint=checkpoint))
            await pilot.pause()
            screen = app.screen
            assert screen.query_one("#upload-repo", Input).value == "me/demo-model-sft"
            assert screen.query_one("#upload-formats", SelectionList).selected == ["lora"]
            screen.query_one("#upload-repo", Input).value = "me/from-the-form"
            await pilot.press("p")  # preview: the card, and where each file would go
            await pilot.pause()
            card = screen.query_one("#upload-card", Markdown)
            assert "# from-the-form" in card.source and 'from_pretrained(base, "me/from-the-form")' in card.source
            note = str(screen.query_one("#upload-note").render())
            assert "lora          -> /" in note and "not exported yet" in note
            await pilot.press("u")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            for _ in range(1200):  # export (a child process) and upload
                await pilot.pause(0.1)
                if not screen.busy:
                    break
            log = "\n".join(screen.query_one("#upload-log", Log).lines)
            assert "lora: verified" in log and "Uploaded to me/from-the-form" in log, log
            assert "/commit/" in log  # the commit links, as the result
            assert SECRET not in log
        received = {path for commit in hub.commits for path in commit["files"]}
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= received
        assert hub.repos["me/from-the-form"]["private"] is True


def test_model_card_carries_training_curves_evals_and_the_right_usage(runs_dir):
    from conftest import write_run

    from synaptic_tui.modelcard import build_model_card
    from synaptic_tui.runs import load_run

    run_dir = write_run(
        runs_dir, "20261122-100000-kto-card",
        config={"method": "kto", "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct", "max_seq_length": 2048},
                "dataset": {"path": "/data/kto_tool_calls.jsonl"},
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
                "training": {"learning_rate": 5e-5, "per_device_train_batch_size": 4, "max_steps": 20}},
        metrics=[{"step": 10, "loss": 0.5, "kl": 0.2, "rewards/margins": 0.4},
                 {"step": 20, "loss": 0.4, "kl": 0.5, "rewards/margins": 0.5}])
    (run_dir / "evals" / "20261122-110000-demo").mkdir(parents=True)
    (run_dir / "evals" / "20261122-110000-demo" / "summary.json").write_text(json.dumps(
        {"total": 8, "passed": 6, "pass_rate": 0.75, "per_tag": {"search": {"passed": 3, "total": 4}}}))
    card = str(build_model_card(load_run(run_dir), "checkpoint-10", ["lora", "gguf-q8_0"], "me/kto-card"))
    assert "base_model: Qwen/Qwen2.5-0.5B-Instruct" in card and "library_name: peft" in card and "- gguf" in card
    assert "| dataset | `kto_tool_calls.jsonl` |" in card and "| learning_rate | 5e-05 |" in card
    assert "| LoRA | r=16, alpha=32" in card
    assert "| kl | 0.5 | 0.5 |" in card and "| rewards/margins | 0.5 | 0.5 |" in card
    assert "| score (margin / KL) | 1 | 2 |" in card  # final 0.5/0.5, best 0.4/0.2
    assert "6/8 tool-calling cases passed (75%)" in card and "| search | 3 | 4 |" in card
    assert 'PeftModel.from_pretrained(base, "me/kto-card")' in card and "ollama run hf.co/me/kto-card:Q8_0" in card

    mlx_run = write_run(runs_dir, "20261122-120000-sft-mlx", config={"platform": "mlx", "model": {"name": "demo"}})
    card = str(build_model_card(load_run(mlx_run), "final", ["lora"], "me/mlx-card"))
    # mlx-lm's adapter format: loaded with mlx-lm, not PEFT.
    assert "library_name: mlx" in card and "PeftModel" not in card
    assert 'load("demo", adapter_path=adapters)' in card


async def test_the_upload_form_is_never_left_busy(run_dir, runs_dir, monkeypatch):
    from textual.widgets import Log

    from synaptic_tui import exporting
    from synaptic_tui.app import SynapticApp
    from synaptic_tui.runs import load_run
    from synaptic_tui.screens.upload import UploadScreen
    from synaptic_tui.services import Services

    async def crashed(*args, **kwargs):
        raise RuntimeError("the exporter could not start")

    monkeypatch.setattr(exporting, "run_export_async", crashed)
    app = SynapticApp(Services.create(runs_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.push_screen(UploadScreen(run_dir=run_dir, checkpoint="final"))
        await pilot.pause()
        screen = app.screen
        screen._start(load_run(run_dir), "final", ["lora"], None)
        for _ in range(50):
            await pilot.pause(0.1)
            if not screen.busy:
                break
        assert not screen.busy
        assert "RuntimeError: the exporter could not start" in "\n".join(screen.query_one("#upload-log", Log).lines)


def test_the_dry_run_estimates_what_is_not_exported_yet(run_dir, runs_dir):
    out = cli("upload", run_dir.name, "--repo-id", "me/x", "--format", "merged-16bit", "--dry-run", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    # The demo model's size is known from its files: a merged bf16 copy is about 2 bytes a parameter.
    assert "merged-16bit  -> /              not exported yet (about " in out.stdout


def exporter_events(process: subprocess.Popen, until) -> list[dict]:
    """The exporter's JSON events, read as they come, up to the first one `until` accepts."""
    seen = []
    for line in process.stdout:
        if line.startswith('{"event"'):
            seen.append(json.loads(line))
            if until(seen[-1]):
                return seen
    raise AssertionError(f"the exporter ended first: {seen}")


@pytest.mark.slow
def test_a_stopped_export_leaves_nothing_half_written(run_dir, runs_dir):
    best = json.loads((run_dir / "status.json").read_text())["best_checkpoint"]
    # SIGTERM to the exporter (what the app and `pipeline cancel` send) while it merges, after lora is done.
    exporter = subprocess.Popen([sys.executable, "-m", "trainers.export", "--run-dir", str(run_dir),
                                 "--format", "lora", "--format", "merged-16bit"], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        events = exporter_events(exporter, lambda e: e["event"] == "step" and e["format"] == "merged-16bit")
        exporter.send_signal(signal.SIGTERM)
        rest = [json.loads(line) for line in exporter.stdout if line.startswith('{"event"')]
        assert exporter.wait(timeout=120) == 3
    finally:
        exporter.kill()
    assert [e["format"] for e in events if e["event"] == "done"] == ["lora"]
    assert rest == [{"event": "error", "message": "stopped by SIGTERM; finished formats were kept, "
                                                  "the unfinished one removed"}]
    assert sorted(p.name for p in (run_dir / "exports").iterdir()) == [best]
    assert sorted(p.name for p in (run_dir / "exports" / best).iterdir()) == ["lora"]  # no merged-16bit, no staging
    assert read_export(export_dir(run_dir, best, "lora"))["format"] == "lora"

    # ctrl+c on `synaptic-tui export`: it stops its exporter the same way and says so.
    command = subprocess.Popen([sys.executable, "-m", "synaptic_tui", "export", run_dir.name, "--format", "merged-16bit",
                                "--runs-dir", str(runs_dir)], cwd=REPO, text=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        for line in command.stderr:
            if line.startswith("  [merged-16bit] merging the adapter"):
                break
        command.send_signal(signal.SIGINT)
        stderr = command.stderr.read()
        assert command.wait(timeout=120) == 3
    finally:
        command.kill()
    assert "export stopped; finished formats were kept" in stderr
    assert sorted(p.name for p in (run_dir / "exports" / best).iterdir()) == ["lora"]
    assert no_staging_left(run_dir)


@pytest.mark.slow
def test_a_public_upload_puts_the_gguf_files_at_the_repo_root(run_dir, runs_dir):
    with HubServer(token=SECRET) as hub:
        out = cli("upload", run_dir.name, "--repo-id", "me/demo-gguf", "--format", "lora", "--format", "gguf-q8_0",
                  "--public", runs_dir=runs_dir, env=hub.env, timeout=900)
        assert out.returncode == 0, out.stderr
        repo = hub.repos["me/demo-gguf"]
        assert (repo["private"], repo["visibility"]) == (False, "public")
        best = json.loads((run_dir / "status.json").read_text())["best_checkpoint"]
        gguf_dir = export_dir(run_dir, best, "gguf-q8_0")
        gguf = read_export(gguf_dir)["file"]
        # The first weights format and every GGUF file at the root: `ollama run hf.co/me/demo-gguf:Q8_0` finds it.
        assert set(repo["files"]) == {"adapter_config.json", "adapter_model.safetensors", gguf, "Modelfile.q8_0",
                                      "README.md"} | {f for f in read_export(export_dir(run_dir, best, "lora"))["files"]
                                                      if f != "export.json"}
        assert repo["files"][gguf] == (gguf_dir / gguf).read_bytes() and gguf in repo["lfs_paths"]
        card = repo["files"]["README.md"].decode()
    assert "- **gguf-q8_0** in the repository root." in card and "ollama run hf.co/me/demo-gguf:Q8_0" in card
    # The demo tokenizer is unknown to llama.cpp: the card and the export report say which pre-tokenizer was used.
    assert "llama.cpp did not recognise this tokenizer's pre-tokenizer, so the GGUF uses `gpt-2`'s" in card
    assert "pre-tokenizer: not known to llama.cpp, 'gpt-2' used" in out.stdout
    assert "uploaded to " + hub.url + "/me/demo-gguf" in out.stdout


async def test_x_on_the_upload_form_exports_without_uploading(run_dir, runs_dir, monkeypatch):
    from textual.widgets import Log

    from synaptic_tui.app import SynapticApp
    from synaptic_tui.screens.upload import UploadScreen
    from synaptic_tui.services import Services

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: an upload attempt would fail
    best = json.loads((run_dir / "status.json").read_text())["best_checkpoint"]
    app = SynapticApp(Services.create(runs_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.push_screen(UploadScreen(run_dir=run_dir, checkpoint=best))
        await pilot.pause()
        screen = app.screen
        await pilot.press("x")
        await pilot.pause()
        assert screen.busy  # started at once, no confirm: exporting sends nothing anywhere
        for _ in range(1200):
            await pilot.pause(0.1)
            if not screen.busy:
                break
        log = "\n".join(screen.query_one("#upload-log", Log).lines)
    lora = export_dir(run_dir, best, "lora")
    assert f"lora: verified, {lora}" in log and log.splitlines()[-1] == f"Exported lora of {best}.", log
    assert read_export(lora)["verify"]["loads"] is True
    assert [e["format"] for e in list_exports(run_dir)] == ["lora"] and no_staging_left(run_dir)
