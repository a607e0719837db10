"""GGUF export with llama.cpp's own converter, read back and checked before anyone uploads it.

The converter (`convert_hf_to_gguf.py` with its `conversion` package and
`gguf-py`) comes from `$LLAMA_CPP_DIR` (a llama.cpp checkout), else from the
llama-cpp-python sdist of a pinned version, fetched once with `pip download`
into the user cache: reproducible, and without the converter's requirements
files, which pin old torch and transformers. It runs in a child process
(`python -m trainers.gguf convert ...`) that falls back to the gpt-2
pre-tokenizer for byte-level BPE tokenizers llama.cpp does not know by hash,
which is every tokenizer trained locally.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable

from synaptic_tui.exporting import ExportError
from synaptic_tui.paths import cache_dir

LLAMA_CPP_PYTHON = "0.3.36"  # its vendor/llama.cpp holds the converter we test against
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
OUTTYPE = {"gguf-f16": "f16", "gguf-q8_0": "q8_0"}
QUANT = {"gguf-q4_k_m": "Q4_K_M"}
FALLBACK_PRE = "gpt-2"
# Tokens that end a turn in the common chat templates; the Modelfile stops on those the vocab has.
TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def _complete(directory: Path) -> bool:
    return all((directory / part).exists() for part in CONVERTER_PARTS)


def find_converter() -> Path | None:
    """The llama.cpp directory holding the converter, or None when it still has to be fetched.

    Raises ExportError when $LLAMA_CPP_DIR is set but does not hold a converter:
    the user asked for that one, so falling back silently would hide a mistake.
    """
    wanted = os.environ.get("LLAMA_CPP_DIR")
    if wanted:
        path = Path(wanted).expanduser()
        if not _complete(path):
            raise ExportError(f"LLAMA_CPP_DIR={wanted} has no convert_hf_to_gguf.py with conversion/ and gguf-py/ "
                              "beside it; point it at a llama.cpp checkout, or unset it to use the pinned converter")
        return path
    cached = cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    return cached if _complete(cached) else None


def fetch_converter(say: Callable[[str], Any]) -> Path:
    """Fetch the pinned llama-cpp-python sdist (source only, no build) and keep just the converter."""
    found = find_converter()
    if found is not None:
        return found
    target = cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    say(f"fetching llama.cpp's converter (llama-cpp-python {LLAMA_CPP_PYTHON} sdist, ~75 MB, once)")
    with tempfile.TemporaryDirectory(prefix="synaptic-llamacpp-") as tmp:
        out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                              "--disable-pip-version-check", "-q", "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
                             capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if out.returncode != 0 or not archives:
            last = (out.stderr.strip().splitlines() or ["no archive"])[-1]
            raise ExportError(f"could not fetch llama.cpp's converter with pip ({last}); set LLAMA_CPP_DIR to a "
                              "llama.cpp checkout instead")
        staging = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=target.parent if target.parent.exists()
                                        else _mkdir(target.parent)))
        try:
            with tarfile.open(archives[0]) as archive:
                prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
                members = [m for m in archive.getmembers() if m.name.startswith(prefix)
                           and m.name[len(prefix):].split("/")[0] in CONVERTER_PARTS and (m.isfile() or m.isdir())]
                for member in members:
                    member.name = member.name[len(prefix):]
                archive.extractall(staging, members=members, filter="data")
            if not _complete(staging):
                raise ExportError(f"the llama-cpp-python {LLAMA_CPP_PYTHON} sdist has no converter where expected")
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- in the child process --------------------------------------------------


def _convert_main(llama_cpp: Path, args: list[str]) -> None:
    """Run the converter unmodified, but with the gpt-2 pre-tokenizer as fallback for unknown BPE hashes."""
    # The vendored gguf-py first, so a pip-installed `gguf` of another version cannot shadow it.
    sys.path[:0] = [str(llama_cpp / "gguf-py"), str(llama_cpp)]
    import convert_hf_to_gguf
    from conversion.base import TextModel

    original = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            logging.getLogger("hf-to-gguf").warning(
                "[synaptic] pre-tokenizer hash not known to llama.cpp: using %r, which matches byte-level BPE",
                FALLBACK_PRE)
            print(json.dumps({"pre_tokenizer_fallback": FALLBACK_PRE}), flush=True)
            return FALLBACK_PRE

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(llama_cpp / "convert_hf_to_gguf.py"), *args]
    convert_hf_to_gguf.main()


def _read_main(llama_cpp: Path, path: str) -> None:
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    print(json.dumps(read_gguf(Path(path))), flush=True)


def read_gguf(path: Path) -> dict[str, Any]:
    """What a loader needs from a GGUF file, read back with gguf-py."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))

    def value(key: str):
        field = reader.get_field(key)
        if field is None:
            return None
        kind = field.types[0]
        if kind == GGUFValueType.STRING:
            return bytes(field.parts[field.data[0]]).decode("utf-8")
        if kind == GGUFValueType.ARRAY:
            return len(field.data)
        return field.parts[field.data[0]].tolist()[0]

    arch = value("general.architecture")
    return {"architecture": arch, "tensors": len(reader.tensors), "tokenizer_model": value("tokenizer.ggml.model"),
            "pre_tokenizer": value("tokenizer.ggml.pre"), "tokens": value("tokenizer.ggml.tokens"),
            "eos_token_id": value("tokenizer.ggml.eos_token_id"), "chat_template": value("tokenizer.chat_template"),
            "context_length": value(f"{arch}.context_length") if arch else None}


# --- in the exporter ---------------------------------------------------------


def _child(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainers.gguf", command, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _failure(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or [f"exit code {out.returncode}"])[-1][:500]


def convert(llama_cpp: Path, model_dir: Path, outfile: Path, outtype: str, name: str) -> dict[str, Any]:
    out = _child("convert", str(llama_cpp), str(model_dir), "--outtype", outtype, "--outfile", str(outfile),
                 "--model-name", name)
    sys.stderr.write(out.stderr[-20000:])  # into export.log, for whoever needs the converter's own words
    if out.returncode != 0 or not outfile.is_file():
        raise ExportError(f"llama.cpp's converter failed on {model_dir.name}: {_failure(out)}")
    notes = {}
    for line in out.stdout.splitlines():
        if line.startswith('{"pre_tokenizer_fallback"'):
            notes.update(json.loads(line))
    return notes


def quantize(source: Path, target: Path, quant: str) -> str:
    """k-quants need llama.cpp's quantizer: the binary if on PATH, else llama-cpp-python's library."""
    binary = shutil.which("llama-quantize")
    if binary:
        out = subprocess.run([binary, str(source), str(target), quant], capture_output=True, text=True)
        if out.returncode != 0 or not target.is_file():
            raise ExportError(f"llama-quantize failed: {_failure(out)}")
        return binary
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if code != 0 or not target.is_file():
        raise ExportError(f"llama-cpp-python's llama_model_quantize failed with code {code}")
    return "llama-cpp-python"


def llama_cpp_probe(path: Path) -> dict[str, Any] | None:
    """Up to four greedy tokens from the GGUF through llama-cpp-python and their text, where it is installed;
    None where it is not. The ids are kept so the text can be checked against the original tokenizer's decoding."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    model = Llama(model_path=str(path), n_ctx=256, verbose=False)
    tokens: list[int] = []
    for token in model.generate(model.tokenize(b"Hello"), temp=0.0):
        if token == model.token_eos() or len(tokens) == 4:
            break
        tokens.append(int(token))
    return {"tokens": tokens, "text": model.detokenize(tokens).decode("utf-8", errors="replace")}


def stop_tokens(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    found = [tokenizer.eos_token] if tokenizer.eos_token else []
    found += [t for t in TURN_ENDS if t in vocab and t not in found]
    return found


def modelfile(gguf_name: str, stops: list[str], ollama_name: str, quant: str, template: str | None = None) -> str:
    """An Ollama Modelfile; `template` (Go) is the run's chat template as Ollama must be told it."""
    lines = [f"# Ollama: ollama create {ollama_name} -f Modelfile.{quant}",
             "# The chat template travels inside the GGUF (tokenizer.chat_template)"
             + ("; Ollama needs it as TEMPLATE below to render prompts and read tool calls back." if template
                else "; Ollama picks its own template for it, and may not read tool calls back."),
             f"FROM ./{gguf_name}"]
    if template:
        lines.append(f'TEMPLATE """{template.strip()}"""')
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    return "\n".join(lines) + "\n"


def build_gguf(fmt: str, merged_dir: Path, out: Path, name: str, say: Callable[..., Any]) -> dict[str, Any]:
    """Convert (and if needed quantize) the merged model into out/, then read the file back."""
    from trainers.export import load_tokenizer, template_supports_tools

    llama_cpp = fetch_converter(lambda message: say(message, fmt))
    out.mkdir(parents=True)
    quant = fmt.split("-", 1)[1]
    gguf_name = f"{name}-{quant}.gguf"
    target = out / gguf_name
    record: dict[str, Any] = {"converter": str(llama_cpp), "file": gguf_name}
    if fmt in OUTTYPE:
        say(f"converting with llama.cpp's convert_hf_to_gguf.py ({OUTTYPE[fmt]})", fmt)
        record.update(convert(llama_cpp, merged_dir, target, OUTTYPE[fmt], name))
    else:
        f16 = out.parent / f".{name}-f16-for-{quant}.gguf"
        try:
            say("converting to f16 for the quantizer", fmt)
            record.update(convert(llama_cpp, merged_dir, f16, "f16", name))
            say(f"quantizing to {QUANT[fmt]}", fmt)
            record["quantizer"] = quantize(f16, target, QUANT[fmt])
        finally:
            f16.unlink(missing_ok=True)
    if record.get("pre_tokenizer_fallback"):
        say(f"llama.cpp does not know this tokenizer's pre-tokenizer: used {FALLBACK_PRE!r} (byte-level BPE)", fmt)
    say("verifying: reading the GGUF back", fmt)
    read = _child("read", str(llama_cpp), str(target))
    if read.returncode != 0:
        raise ExportError(f"{gguf_name} cannot be read back: {_failure(read)}")
    info = json.loads(read.stdout.strip().splitlines()[-1])
    tokenizer = load_tokenizer(str(merged_dir))
    problems = [what for what, ok in (("no architecture", info["architecture"]), ("no tensors", info["tensors"]),
                                      ("no tokenizer", info["tokenizer_model"]),
                                      ("no chat template", info["chat_template"] or not tokenizer.chat_template))
                if not ok]
    if problems:
        raise ExportError(f"{gguf_name} failed verification: {', '.join(problems)}")
    template = info.pop("chat_template")
    tools = template_supports_tools(tokenizer) if template == tokenizer.chat_template else False
    sample = llama_cpp_probe(target)
    info.update({"chat_template": template is not None, "tools_in_template": tools,
                 "llama_cpp_sample": sample["text"] if sample else None,
                 "llama_cpp_tokens": sample["tokens"] if sample else None, "loaded_by_llama_cpp": sample is not None})
    record["verify"] = info
    ollama_name = name.lower()
    from trainers.chat_templates import builtin_for, ollama_template

    go_template = ollama_template(tokenizer.chat_template)
    builtin = builtin_for(tokenizer.chat_template)
    record["chat_template"] = builtin.name if builtin else ("model's own" if tokenizer.chat_template else None)
    record["ollama_template"] = go_template is not None
    (out / f"Modelfile.{quant}").write_text(modelfile(gguf_name, stop_tokens(tokenizer), ollama_name, quant,
                                                      go_template))
    record["modelfile"] = f"Modelfile.{quant}"
    record["ollama_name"] = ollama_name  # the export's finish() writes the `ollama create` line with its final path
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, llama_cpp, rest = argv[0], Path(argv[1]), argv[2:]
    if command == "convert":
        _convert_main(llama_cpp, rest)
    elif command == "read":
        _read_main(llama_cpp, rest[0])
    else:
        raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
