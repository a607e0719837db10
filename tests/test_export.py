"""Export and upload, for real: a trained demo run exported on CPU, uploaded to a loopback Hub.

The Hub itself cannot be reached here: tests/hub_server.py speaks the endpoints
huggingface_hub calls for create_repo and upload_folder (see its docstring).
"""

from __future__ import annotations

import json
import os
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


def test_merged_4bit_without_cuda_fails_before_any_work(run_dir, runs_dir):
    out = cli("export", run_dir.name, "--format", "lora", "--format", "merged-4bit", runs_dir=runs_dir)
    assert out.returncode == 2
    assert "merged-4bit needs a CUDA GPU" in out.stderr
    assert not (run_dir / "exports" / "checkpoint-4").exists()  # not even the lora that could have been made
    assert no_staging_left(run_dir)


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


def test_an_export_that_does_not_fit_on_disk_is_refused_up_front(run_dir, runs_dir, tmp_path):
    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        (run_dir / "exports").symlink_to(small, target_is_directory=True)
        out = cli("export", run_dir.name, "--format", "merged-16bit", runs_dir=runs_dir)
        assert out.returncode == 2, out.stderr
        assert "not enough free disk" in out.stderr and "merged-16bit needs about" in out.stderr
        assert [p.name for p in small.iterdir()] == ["export.log"]
    finally:
        subprocess.run(["umount", str(small)], check=False)


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


def test_k_quants_without_a_quantizer_say_what_to_install(run_dir, runs_dir):
    out = cli("export", run_dir.name, "--format", "gguf-q4_k_m", runs_dir=runs_dir,
              env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert "gguf-q4_k_m needs llama.cpp's quantizer" in out.stderr and "llama-cpp-python" in out.stderr
    assert not any((run_dir / "exports").rglob("*.gguf"))


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
            assert SECRET not in log
        received = {path for commit in hub.commits for path in commit["files"]}
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= received
        assert hub.repos["me/from-the-form"]["private"] is True
