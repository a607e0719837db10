"""Doctor and token discovery: real loopback servers shaped like Ollama and OpenAI, fake nvidia-smi and packages."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO

from synaptic_tui import doctor
from synaptic_tui.doctor import Check, check_cuda, check_mlx, check_unsloth, checks_to_json, format_report, run_checks
from synaptic_tui.hf_token import find_hf_token, read_dotenv_token, redact
from synaptic_tui.servers import engines

ORDER = ["Python", "Extras", "CUDA", "MLX", "Unsloth", "Serving", "Disk", "Memory", "Ollama", "LM Studio",
         "HF token"]
SECRET = "hf_SECRETsecretSECRETsecret1234"

# The response shapes of Ollama's GET /api/tags and OpenAI's GET /v1/models.
OLLAMA_TAGS = {"models": [
    {"name": "demo:latest", "model": "demo:latest", "modified_at": "2026-11-20T10:00:00.000000+00:00",
     "size": 1234, "digest": "sha256:" + "a" * 64,
     "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                 "parameter_size": "0.3M", "quantization_level": "Q8_0"}},
    {"name": "qwen2.5:0.5b", "model": "qwen2.5:0.5b", "modified_at": "2026-11-19T10:00:00.000000+00:00",
     "size": 397821319, "digest": "sha256:" + "b" * 64,
     "details": {"parent_model": "", "format": "gguf", "family": "qwen2", "families": ["qwen2"],
                 "parameter_size": "494.03M", "quantization_level": "Q4_K_M"}},
]}
OPENAI_MODELS = {"object": "list", "data": [
    {"id": "demo-model", "object": "model", "created": 1763632800, "owned_by": "organization_owner"},
    {"id": "text-embedding-nomic", "object": "model", "created": 1763632800, "owned_by": "organization_owner"},
    {"id": "qwen2.5-0.5b-instruct", "object": "model", "created": 1763632800, "owned_by": "organization_owner"},
]}


def serve(routes: dict[str, tuple[int, bytes]]):
    """A real HTTP server on 127.0.0.1; unknown paths answer 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            code, body = routes.get(self.path, (404, b'{"error":"not found"}'))
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def servers():
    """(ollama_url, openai_url): two separate servers, so neither check can pass on the other's route."""
    ollama, ollama_url = serve({"/api/tags": (200, json.dumps(OLLAMA_TAGS).encode())})
    openai, openai_url = serve({"/v1/models": (200, json.dumps(OPENAI_MODELS).encode())})
    yield ollama_url, openai_url
    for httpd in (ollama, openai):
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def down():
    """run_checks keyword arguments that point both servers at closed ports."""
    return {"ollama_url": closed_port(), "lmstudio_url": closed_port(), "timeout": 0.5}


@pytest.fixture
def no_login_cache(tmp_path, monkeypatch):
    """huggingface_hub computed HF_TOKEN_PATH from $HF_TOKEN_PATH/$HF_HOME when first imported, so patch the constant."""
    import huggingface_hub.constants

    path = tmp_path / "hf-login" / "token"
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(path))
    return path


def by_name(checks):
    return {c.name: c for c in checks}


def fake_command(bin_dir: Path, name: str, script: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def fake_package(root: Path, name: str, init: str, monkeypatch) -> None:
    """A package that shadows the real one here (sys.path) and in the check's subprocess ($PYTHONPATH)."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(init)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    importlib.invalidate_caches()


# Servers


async def test_servers_reachable_with_their_models(servers, tmp_path):
    ollama_url, openai_url = servers
    checks = by_name(await run_checks(tmp_path, ollama_url=ollama_url, lmstudio_url=openai_url))
    ollama, lmstudio = checks["Ollama"], checks["LM Studio"]
    assert (ollama.status, ollama.summary) == ("ok", f"reachable at {ollama_url}, 2 models")
    assert ollama.detail["models"] == ["demo:latest", "qwen2.5:0.5b"] and ollama.detail["reachable"] is True
    assert (lmstudio.status, lmstudio.summary) == ("ok", f"reachable at {openai_url}, 3 models")
    assert lmstudio.detail["models"] == ["demo-model", "text-embedding-nomic", "qwen2.5-0.5b-instruct"]


async def test_servers_down_are_reported_not_reachable(tmp_path, down):
    checks = by_name(await run_checks(tmp_path, **down))
    assert (checks["Ollama"].status, checks["Ollama"].summary) == ("info", f"not reachable at {down['ollama_url']}")
    assert checks["LM Studio"].summary == f"not reachable at {down['lmstudio_url']}"
    assert checks["LM Studio"].detail["reachable"] is False and checks["LM Studio"].detail["models"] == []


async def test_loopback_servers_are_not_sent_through_a_proxy(servers, tmp_path, monkeypatch):
    # Common on GPU boxes behind a corporate proxy: httpx would send 127.0.0.1 to it and call Ollama down.
    proxy = closed_port()
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    ollama_url, openai_url = servers
    checks = by_name(await run_checks(tmp_path, ollama_url=ollama_url, lmstudio_url=openai_url))
    assert checks["Ollama"].status == "ok" and checks["LM Studio"].status == "ok"


async def test_a_server_that_is_not_ollama_is_a_warning(servers, tmp_path):
    ollama_url, openai_url = servers
    # Swapped: each port answers, but 404 for the other's route.
    checks = by_name(await run_checks(tmp_path, ollama_url=openai_url, lmstudio_url=ollama_url))
    assert checks["Ollama"].status == "warn" and "HTTP 404" in checks["Ollama"].summary
    assert checks["Ollama"].detail["reachable"] is True and checks["Ollama"].detail["models"] == []
    assert checks["LM Studio"].status == "warn"


async def test_a_json_answer_without_the_model_list_is_a_warning(tmp_path, down):
    httpd, url = serve({"/api/tags": (200, b'{"status":"ok"}'), "/v1/models": (200, b"<html>hi</html>")})
    try:
        checks = by_name(await run_checks(tmp_path, ollama_url=url, lmstudio_url=url))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert checks["Ollama"].status == "warn" and "no 'models' list" in checks["Ollama"].summary
    assert checks["LM Studio"].status == "warn" and "no 'data' list" in checks["LM Studio"].summary


# This machine


async def test_this_machine(tmp_path, down, no_login_cache):
    checks = await run_checks(tmp_path / "not" / "yet" / "runs", **down)
    assert [c.name for c in checks] == ORDER
    named = by_name(checks)
    # Every status this machine has to give: only the parts that differ between machines are looked up.
    complete = [extra for extra, dists in doctor.EXTRAS.items() if extra != "unsloth"
                and all(importlib.util.find_spec(d.replace("-", "_")) for d in dists)]
    expected = {"Python": "ok", "Extras": "ok" if complete else "warn",
                "CUDA": "info" if shutil.which("nvidia-smi") is None else "ok",
                "MLX": "info" if importlib.util.find_spec("mlx") is None else "ok",
                "Unsloth": "info" if importlib.util.find_spec("unsloth") is None else "ok",
                "Serving": "ok" if any(e.missing() is None for e in engines().values()) else "warn",
                "Disk": "ok" if shutil.disk_usage(tmp_path).free >= doctor.LOW_DISK_GB * 2**30 else "warn",
                "Memory": "ok", "Ollama": "info", "LM Studio": "info", "HF token": "info"}
    assert {c.name: c.status for c in checks} == expected, [(c.name, c.summary) for c in checks]
    assert named["Extras"].detail["complete"] == complete
    assert named["Python"].status == "ok" and named["Python"].detail["executable"] == sys.executable
    versions = named["Extras"].detail["versions"]
    for extra, dist in (("train", "torch"), ("train", "trl"), ("mlx", "mlx"), ("mlx", "mlx-lm")):
        try:
            expected = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            expected = None
        assert versions[extra][dist] == expected
    mlx = named["MLX"]
    if importlib.util.find_spec("mlx") is None:
        assert mlx.status == "info" and mlx.summary.startswith("not installed")
    else:
        assert mlx.status == "ok" and mlx.detail["device"].startswith("Device(")
        if sys.platform.startswith("linux"):
            assert "cpu" in mlx.summary and "CPU backend" in mlx.summary
    # The runs dir does not exist yet: its nearest existing parent is measured.
    assert named["Disk"].detail["path"] == str(tmp_path) and named["Disk"].detail["free_gb"] > 0
    assert named["Memory"].detail["total_gb"] > 0.1
    assert 0 < named["Memory"].detail["available_gb"] <= named["Memory"].detail["total_gb"]
    assert (named["HF token"].status, named["HF token"].detail["source"]) == ("info", None)
    json.dumps(checks_to_json(checks))  # plain JSON, as `doctor --json` prints it


def test_extras_missing_torch_warns_with_the_install_command(monkeypatch):
    monkeypatch.setattr(doctor, "_version", lambda dist: None if dist in ("torch", "mlx-lm") else "1.0")
    check = doctor.check_extras()
    assert check.status == "warn" and check.detail["complete"] == []
    assert "pip install -c .ci/constraints.txt -e '.[train]'" in check.summary
    assert "(missing torch)" in check.summary and check.detail["versions"]["train"]["torch"] is None
    monkeypatch.setattr(doctor, "_version", lambda dist: None if dist == "torch" else "1.0")
    assert doctor.check_extras().status == "ok" and doctor.check_extras().detail["complete"] == ["mlx"]


def test_low_disk_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100 * 2**30, 95 * 2**30, 5 * 2**30))
    check = doctor.check_disk(tmp_path)
    assert check.status == "warn" and check.summary.startswith(f"5.0 GB free at {tmp_path}, under 20 GB")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100 * 2**30, 50 * 2**30, 50 * 2**30))
    assert doctor.check_disk(tmp_path).status == "ok"


# CUDA via a fake nvidia-smi


def recorded_nvidia_smi(bin_dir: Path, query: str, output: str) -> None:
    """nvidia-smi answering `output` to exactly `query` (its arguments), and refusing anything else as the real
    one refuses an unknown field, so a check that asks the wrong question fails instead of reading the answer."""
    fake_command(bin_dir, "nvidia-smi",
                 f'if [ "$*" != {shlex.quote(query)} ]; then\n'
                 '  echo "Field \\"$1\\" is not a valid field to query." >&2; exit 2\nfi\n'
                 f"cat <<'OUT'\n{output}OUT\n")


async def test_fake_nvidia_smi_is_parsed(tmp_path, monkeypatch, down):
    # Written out, not taken from doctor.NVIDIA_QUERY: the test must not agree with the code by construction.
    recorded_nvidia_smi(tmp_path / "bin", "--query-gpu=name,memory.total,memory.free,driver_version "
                                          "--format=csv,noheader,nounits",
                        "NVIDIA H100 80GB HBM3, 81559, 80000, 580.65.06\n"
                        "NVIDIA GeForce RTX 3090, 24576, 1024, 580.65.06\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cuda = by_name(await run_checks(tmp_path, **down))["CUDA"]
    assert cuda.status == "ok" and len(cuda.detail["gpus"]) == 2
    first, second = cuda.detail["gpus"]
    assert first["name"] == "NVIDIA H100 80GB HBM3" and first["memory_total_gb"] == pytest.approx(79.647, abs=1e-3)
    assert second == {"index": 1, "name": "NVIDIA GeForce RTX 3090", "memory_total_gb": 24.0, "memory_free_gb": 1.0,
                      "driver": "580.65.06"}
    assert cuda.summary == ("2 GPUs: NVIDIA H100 80GB HBM3 (78.1/79.6 GB free), NVIDIA GeForce RTX 3090 "
                            "(1.0/24.0 GB free); driver 580.65.06")


async def test_no_nvidia_smi_is_info(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    cuda = await check_cuda()
    assert (cuda.status, cuda.summary) == ("info", "no NVIDIA GPU (nvidia-smi not found)")


async def test_failing_nvidia_smi_warns_with_its_reason(tmp_path, monkeypatch):
    fake_command(tmp_path / "bin", "nvidia-smi",
                 "echo 'Failed to initialize NVML: Driver/library version mismatch' >&2\n"
                 "echo 'NVML library version: 580.65' >&2\nexit 18\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    cuda = await check_cuda()
    assert (cuda.status, cuda.summary) == ("warn", "nvidia-smi failed: NVML library version: 580.65")
    assert cuda.detail["exit_code"] == 18


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_hung_nvidia_smi_times_out_and_is_killed(tmp_path, monkeypatch):
    pid_file = tmp_path / "pid"
    fake_command(tmp_path / "bin", "nvidia-smi", f"echo $$ > {pid_file}\nexec sleep 30\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(doctor, "NVIDIA_TIMEOUT", 0.5)
    cuda = await check_cuda()
    assert cuda.status == "warn" and "did not answer" in cuda.summary
    assert _gone(int(pid_file.read_text()))


async def test_cancelled_check_kills_its_subprocess(tmp_path, monkeypatch):
    pid_file = tmp_path / "pid"
    fake_command(tmp_path / "bin", "nvidia-smi", f"echo $$ > {pid_file}\nexec sleep 30\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    task = asyncio.create_task(check_cuda())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if pid_file.exists() and pid_file.read_text().strip():
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _gone(int(pid_file.read_text()))


# MLX and Unsloth via fake packages


async def test_mlx_that_does_not_import_warns(tmp_path, monkeypatch):
    fake_package(tmp_path / "site", "mlx", "raise ImportError('libmlx.so: cannot open shared object file')\n",
                 monkeypatch)
    mlx = await check_mlx()
    assert mlx.status == "warn"
    assert mlx.summary.startswith("mlx does not import: ImportError: libmlx.so: cannot open shared object file")


async def test_unsloth_import_error_warns_with_the_last_stderr_line(tmp_path, monkeypatch):
    fake_package(tmp_path / "site", "unsloth",
                 "raise NotImplementedError('Unsloth cannot find any torch accelerator? You need a GPU.')\n",
                 monkeypatch)
    check = await check_unsloth()
    assert (check.status, check.summary) == (
        "warn", "installed but does not import: NotImplementedError: Unsloth cannot find any torch accelerator? "
                "You need a GPU.")


async def test_unsloth_that_imports_is_ok(tmp_path, monkeypatch):
    fake_package(tmp_path / "site", "unsloth", "", monkeypatch)
    check = await check_unsloth()
    assert check.status == "ok" and check.summary.startswith("unsloth") and check.summary.endswith("imports")


async def test_unsloth_absent_is_info(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert (await check_unsloth()).status == "info"
    assert (await check_mlx()).summary == "not installed (pip install -e '.[mlx]')"


async def test_a_check_that_crashes_is_reported_not_raised(tmp_path, monkeypatch, down):
    def broken(runs_dir):
        raise PermissionError(13, "Permission denied", str(runs_dir))

    monkeypatch.setattr(doctor, "check_disk", broken)
    checks = await run_checks(tmp_path, **down)
    assert [c.name for c in checks] == ORDER
    assert by_name(checks)["Disk"].status == "warn" and "PermissionError" in by_name(checks)["Disk"].summary


# The report


def test_format_report_is_aligned_with_a_status_word_per_line():
    checks = [Check("Python", "ok", "3.11.7 (/usr/bin/python3)"), Check("HF token", "info", "not set"),
              Check("LM Studio", "warn", "something answers\nbut not like it"), Check("X", "fail", "broken")]
    lines = format_report(checks).splitlines()
    assert lines == ["Python     ok    3.11.7 (/usr/bin/python3)",
                     "HF token   info  not set",
                     "LM Studio  warn  something answers but not like it",
                     "X          fail  broken"]
    assert checks_to_json(checks)[1] == {"name": "HF token", "status": "info", "summary": "not set", "detail": {}}


# HF token


async def test_token_from_env_is_never_shown(tmp_path, monkeypatch, down):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    checks = await run_checks(tmp_path, **down)
    token = by_name(checks)["HF token"]
    assert (token.status, token.summary, token.detail) == ("ok", "set (HF_TOKEN)", {"set": True, "source": "HF_TOKEN"})
    report, as_json = format_report(checks), json.dumps(checks_to_json(checks))
    for fragment in (SECRET, SECRET[3:], SECRET[-8:]):
        assert fragment not in report and fragment not in as_json


async def test_token_from_dotenv_is_reported_by_source(tmp_path, monkeypatch, down, no_login_cache):
    (tmp_path / ".env").write_text(f'# Hub\nexport HF_TOKEN="{SECRET}"\n')
    monkeypatch.chdir(tmp_path)
    checks = await run_checks(tmp_path, **down)
    assert by_name(checks)["HF token"].summary == "set (.env)"
    assert SECRET[3:] not in format_report(checks) + json.dumps(checks_to_json(checks))


def test_token_sources_in_order(tmp_path, monkeypatch, no_login_cache):
    assert find_hf_token(tmp_path) == (None, "not set")
    no_login_cache.parent.mkdir()
    no_login_cache.write_text("hf_fromcache\n")
    assert find_hf_token(tmp_path) == ("hf_fromcache", "huggingface-cli login")
    (tmp_path / ".env").write_text("# keys\nexport HF_TOKEN='hf_fromdotenv'\nOTHER=1\n")
    assert find_hf_token(tmp_path) == ("hf_fromdotenv", ".env")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_legacyenv")
    assert find_hf_token(tmp_path) == ("hf_legacyenv", "HUGGING_FACE_HUB_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "  ")  # blank counts as unset, as huggingface_hub treats it
    assert find_hf_token(tmp_path) == ("hf_legacyenv", "HUGGING_FACE_HUB_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "hf_fromenv")
    assert find_hf_token(tmp_path) == ("hf_fromenv", "HF_TOKEN")


def test_cwd_defaults_to_the_working_directory(tmp_path, monkeypatch, no_login_cache):
    (tmp_path / ".env").write_text("HF_TOKEN=hf_here\n")
    monkeypatch.chdir(tmp_path)
    assert find_hf_token() == ("hf_here", ".env")


@pytest.mark.parametrize(("text", "expected"), [
    ("HF_TOKEN=hf_plain\n", "hf_plain"),
    ("export HF_TOKEN=hf_exported\n", "hf_exported"),
    ('HF_TOKEN="hf_double"\n', "hf_double"),
    ("HF_TOKEN='hf_single'\n", "hf_single"),
    ('HF_TOKEN="hf_quoted" # personal\n', "hf_quoted"),
    ("HF_TOKEN=hf_unquoted   # personal\n", "hf_unquoted"),
    ("  HF_TOKEN = hf_spaced  \n", "hf_spaced"),
    ("# HF_TOKEN=hf_commented\nHF_TOKEN=hf_real\n", "hf_real"),
    ("HF_TOKEN=hf_first\nHF_TOKEN=hf_last\n", "hf_last"),
    ("HUGGING_FACE_HUB_TOKEN=hf_legacy\n", "hf_legacy"),
    ("HUGGING_FACE_HUB_TOKEN=hf_legacy\nHF_TOKEN=hf_new\n", "hf_new"),
    ("HF_TOKEN=\nHUGGING_FACE_HUB_TOKEN=hf_fallback\n", "hf_fallback"),
    ("MY_HF_TOKEN=hf_other\nHF_TOKENS=hf_other\nexporter HF_TOKEN=x\n", None),
    ("HF_TOKEN=''\n", None),
    ("", None),
])
def test_dotenv_parsing(tmp_path, text, expected):
    (tmp_path / ".env").write_text(text)
    assert read_dotenv_token(tmp_path / ".env") == expected


def test_missing_or_binary_dotenv_is_ignored(tmp_path):
    assert read_dotenv_token(tmp_path / ".env") is None
    (tmp_path / ".env").write_bytes(b"\xff\xfeHF_TOKEN=x")
    assert read_dotenv_token(tmp_path / ".env") is None


def test_redact():
    assert redact(f"401 Unauthorized for {SECRET} at /api/repos/create ({SECRET})", SECRET) == (
        "401 Unauthorized for hf_*** at /api/repos/create (hf_***)")
    assert redact("nothing secret", None) == "nothing secret"
    assert redact("nothing secret", "") == "nothing secret"


def test_cli_doctor_with_a_login_cache_never_prints_the_token(tmp_path):
    # A fresh process: huggingface_hub reads $HF_TOKEN_PATH itself, the way a user's login is found.
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    env = {**os.environ, "HF_TOKEN_PATH": str(token_file), "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_TOKEN", None)
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    code = ("import asyncio, json, sys\nfrom synaptic_tui.doctor import run_checks, format_report, checks_to_json\n"
            f"checks = asyncio.run(run_checks(sys.argv[1], ollama_url={closed_port()!r}, "
            f"lmstudio_url={closed_port()!r}, timeout=0.5))\n"
            "print(format_report(checks)); print(json.dumps(checks_to_json(checks)))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HF token   ok    set (huggingface-cli login)" in out.stdout
    assert '"source": "huggingface-cli login"' in out.stdout
    assert SECRET[3:] not in out.stdout + out.stderr


# Imports


def test_doctor_imports_no_ui_or_ml_library_even_when_it_runs():
    heavy = ("torch", "transformers", "trl", "peft", "unsloth", "mlx", "mlx_lm", "datasets", "accelerate", "textual")
    code = (
        "import asyncio, json, sys\n"
        "import synaptic_tui.doctor as d, synaptic_tui.hf_token\n"
        f"heavy = {heavy!r}\n"
        "loaded = lambda names: [m for m in names if m in sys.modules]\n"
        "print(json.dumps(loaded(heavy + ('huggingface_hub', 'httpx'))))\n"
        "asyncio.run(d.run_checks(sys.argv[1], ollama_url='http://127.0.0.1:9', lmstudio_url='http://127.0.0.1:9',"
        " timeout=0.2))\n"
        "print(json.dumps(loaded(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "runs")], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    at_import, after_run = (json.loads(line) for line in out.stdout.splitlines())
    # huggingface_hub and httpx are imported lazily too: both cost start-up time.
    assert at_import == [] and after_run == []
