"""Export a run's checkpoint: python -m trainers.export --run-dir DIR --checkpoint best --format F [--format F ...].

Formats: lora, merged-16bit, merged-4bit, gguf-f16, gguf-q8_0, gguf-q4_k_m. Each is
built in a hidden staging directory, verified (merged models reload and
generate; GGUF files are read back), then renamed to
exports/<checkpoint>/<format>/ with export.json written last. Everything that
can be checked before work (checkpoint, CUDA for 4-bit, the quantizer, free
disk) is checked before the first byte is written. Events go to stdout as
JSON lines for the app; SIGTERM stops the export and removes the staging
directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synaptic_tui.config import EXPORT_FORMATS
from synaptic_tui.exporting import (EXPORT_RECORD, GGUF_FORMATS, ExportError, estimated_bytes, export_dir,
                                    exports_root, human_bytes, order_formats, quantizer_available,
                                    resolve_checkpoint)
from synaptic_tui.modelinfo import local_model_dir, read_model_info
from synaptic_tui.runs import load_legacy_run, load_run, slugify, utc_now

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
# What a training checkpoint holds that an exported adapter must not carry along.
TRAINER_STATE = {"optimizer.pt", "optimizer.safetensors", "scheduler.pt", "trainer_state.json", "training_args.bin", "README.md",
                 "scaler.pt"}


class Stopped(BaseException):
    """SIGTERM/SIGINT: a BaseException, so no library's `except Exception` on the way can swallow the stop."""


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


def say(message: str, fmt: str | None = None) -> None:
    emit("step", format=fmt, message=message)


@dataclass
class Plan:
    run_dir: Path
    method: str
    checkpoint: str
    checkpoint_dir: Path
    base_model: str
    formats: list[str]
    config: dict[str, Any]

    @property
    def mlx(self) -> bool:
        """An mlx-lm run: its adapter is in mlx-lm's format, fused with mlx-lm, not PEFT."""
        return self.config.get("platform") == "mlx"


def make_plan(run_dir: Path, checkpoint: str, formats: list[str]) -> Plan:
    """Everything that can fail before work, failing with a message that says what to do."""
    run = load_run(run_dir) or (load_legacy_run(run_dir, "sft") if (run_dir / "final_model").is_dir() else None)
    if run is None:
        raise ExportError(f"{run_dir}: not a run directory (no run.yaml or status.json)")
    formats = order_formats(formats)
    name = resolve_checkpoint(run, checkpoint)
    checkpoint_dir = next(c.path for c in run.checkpoints() if c.name == name)
    if not (checkpoint_dir / "adapter_config.json").is_file():
        raise ExportError(f"{checkpoint_dir}: no adapter_config.json; only LoRA checkpoints can be exported")
    bad, total = nonfinite_weights(checkpoint_dir)
    if bad:
        raise ExportError(f"{name}: {bad} of {total} adapter tensors hold NaN or infinite values (the run diverged), "
                          "so nothing was exported; pick a checkpoint saved before the divergence")
    from synaptic_tui.runs import read_run_config

    config = read_run_config(run_dir)
    base = str((config.get("model") or {}).get("name") or "")
    if not base:
        base = json.loads((checkpoint_dir / "adapter_config.json").read_text()).get("base_model_name_or_path", "")
    if not base:
        raise ExportError(f"{run_dir / 'run.yaml'}: model.name is not set, so the base model is unknown")
    if "merged-4bit" in formats and config.get("platform") == "mlx":
        raise ExportError("merged-4bit is bitsandbytes on CUDA; for an MLX run export merged-16bit "
                          "(or gguf-q8_0 for a small file)")
    if "merged-4bit" in formats:
        import torch

        if not torch.cuda.is_available():
            raise ExportError("merged-4bit needs a CUDA GPU (bitsandbytes 4-bit quantization); this machine has "
                              "none. Export merged-16bit, or gguf-q8_0 / gguf-q4_k_m for a small file, instead")
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ExportError("merged-4bit needs bitsandbytes: pip install bitsandbytes (in this environment)")
    if "gguf-q4_k_m" in formats and quantizer_available() is None:
        raise ExportError("gguf-q4_k_m needs llama.cpp's quantizer: put `llama-quantize` on PATH (build llama.cpp) "
                          "or `pip install llama-cpp-python`; gguf-f16 and gguf-q8_0 need neither")
    if any(f in GGUF_FORMATS for f in formats):
        from trainers.gguf import find_converter

        find_converter()  # raises ExportError saying how to get it
    local = local_model_dir(base)
    info = read_model_info(local) if local else None
    needed = estimated_bytes(info.parameters if info else None, formats)
    root = exports_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if needed and needed > free:
        raise ExportError(f"not enough free disk in {root}: {', '.join(formats)} needs about {human_bytes(needed)}, "
                          f"{human_bytes(free)} is free")
    return Plan(run_dir, run.method, name, checkpoint_dir, base, formats, config)


def nonfinite_weights(checkpoint_dir: Path) -> tuple[int, int]:
    """(tensors holding NaN or infinity, tensors) in a checkpoint's adapter weights: a diverged run's
    adapter is refused for that reason, before a merge would hide it (max() of NaN reads as zero)."""
    import torch
    from safetensors import safe_open

    bad = total = 0
    for name in ("adapter_model.safetensors", "adapters.safetensors"):
        path = checkpoint_dir / name
        if not path.is_file():
            continue
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():
                total += 1
                bad += not bool(torch.isfinite(weights.get_tensor(key)).all())
    return bad, total


# --- building ---------------------------------------------------------------


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def adapter_delta(peft_model) -> float:
    """Largest weight change the adapter makes: 0 means merging would hand back the base model unchanged."""
    import torch

    largest = 0.0
    with torch.no_grad():
        for module in peft_model.modules():
            lora_b = getattr(module, "lora_B", None)
            if not lora_b or not hasattr(lora_b, "items"):
                continue
            for adapter, layer in lora_b.items():
                largest = max(largest, float(layer.weight.abs().max()))
    return largest


def load_adapter(plan: Plan, adapter_dir: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(plan.base_model, dtype=torch.float32)
    if (adapter_dir / "tokenizer_config.json").is_file():
        # Tokens the run's chat template added: the base grows to hold them before the adapter loads.
        vocabulary = len(load_tokenizer(str(adapter_dir)))
        if vocabulary > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(vocabulary)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    delta = adapter_delta(model)
    if delta == 0.0:
        raise ExportError(f"{adapter_dir.name}: every LoRA B weight is zero, so the adapter changes nothing "
                          "(a checkpoint saved before any update?); pick a later checkpoint")
    return model, delta


def build_lora(plan: Plan, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True)
    for item in plan.checkpoint_dir.iterdir():
        if item.is_file() and item.name not in TRAINER_STATE and not item.name.startswith("rng_state"):
            shutil.copy2(item, out / item.name)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = plan.base_model
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    return {"base_model": plan.base_model}


def merged_dtype(plan: Plan):
    import torch

    precision = str((plan.config.get("training") or {}).get("precision", "auto"))
    return torch.float16 if precision == "fp16" else torch.bfloat16


def build_merged_16bit(plan: Plan, out: Path) -> dict[str, Any]:
    model, delta = load_adapter(plan, plan.checkpoint_dir)
    merged = model.merge_and_unload()
    dtype = merged_dtype(plan)
    merged = merged.to(dtype)
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer = load_tokenizer(str(plan.checkpoint_dir) if (plan.checkpoint_dir / "tokenizer_config.json").is_file()
                               else plan.base_model)
    tokenizer.save_pretrained(str(out))
    return {"base_model": plan.base_model, "dtype": str(dtype).replace("torch.", ""), "adapter_max_delta": delta}


def build_merged_4bit(plan: Plan, out: Path, merged_16bit: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                               bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(str(merged_16bit), quantization_config=quant, device_map="cuda")
    model.save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(str(merged_16bit)).save_pretrained(str(out))
    return {"base_model": plan.base_model, "quantization": "bitsandbytes nf4"}


# --- verifying --------------------------------------------------------------


def template_supports_tools(tokenizer) -> bool | None:
    """Whether the chat template renders tools and tool calls: None when there is no template at all."""
    from trainers.chat_templates import probe_template

    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = probe_template(tokenizer, tokenizer.chat_template)
    return bool(probe["tools"] and probe["tool_calls"])


def template_record(tokenizer) -> dict[str, Any]:
    """Which chat template an export carries and the tool-call format it writes (what servers must parse)."""
    from trainers.chat_templates import builtin_for, probe_template

    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return {"name": None, "tool_format": None}
    builtin = builtin_for(template)
    return {"name": builtin.name if builtin else "model's own", "tool_format": probe_template(tokenizer, template)["tool_format"]}


def generate_probe(model, tokenizer, device: str = "cpu") -> str:
    """A few greedy tokens from a chat prompt: proof the weights load and run, not that they are good."""
    import torch

    messages = [{"role": "user", "content": "Say hello."}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
    else:
        ids = tokenizer("Say hello.", return_tensors="pt")["input_ids"]
    ids = ids.to(device)
    with torch.no_grad():
        output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    new = output[0, ids.shape[1]:]
    if new.numel() == 0:
        raise ExportError("the model loaded but generated no tokens")
    return tokenizer.decode(new, skip_special_tokens=False)


def verify_transformers(path: Path, plan: Plan, adapter: bool = False, device: str = "cpu") -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    if adapter:
        model, _ = load_adapter(plan, path)
        tokenizer = load_tokenizer(str(path) if (path / "tokenizer_config.json").is_file() else plan.base_model)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), **({"device_map": device} if device != "cpu" else {}))
        tokenizer = load_tokenizer(str(path))
        if not any(path.glob("*.safetensors")):
            raise ExportError(f"{path.name}: no safetensors weights were written")
    sample = generate_probe(model, tokenizer, device)
    return {"loads": True, "sample": sample, "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "tools_in_template": template_supports_tools(tokenizer), "template": template_record(tokenizer)}


# --- the export -------------------------------------------------------------


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def finish(plan: Plan, fmt: str, staged: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write export.json last, then swap the verified directory into place."""
    record = {"format": fmt, "run_id": plan.run_dir.name, "method": plan.method, "checkpoint": plan.checkpoint,
              "created_at": utc_now(), "size_bytes": folder_size(staged),
              "files": sorted(str(f.relative_to(staged)) for f in staged.rglob("*") if f.is_file()), **record}
    target = export_dir(plan.run_dir, plan.checkpoint, fmt)
    if record.get("modelfile"):
        record["ollama_create"] = f"cd {target} && ollama create {record['ollama_name']} -f {record['modelfile']}"
    (staged / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{fmt}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return {**record, "path": str(target)}


def export(plan: Plan, staging: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    merged_for_gguf: Path | None = None
    for fmt in plan.formats:
        started = time.monotonic()
        staged = staging / fmt
        if fmt == "lora" and plan.mlx:
            from trainers import mlx_lora

            say("copying the mlx-lm adapter", fmt)
            record = build_lora(plan, staged)
            delta = mlx_lora.adapter_max(staged)
            if delta == 0.0:
                raise ExportError(f"{plan.checkpoint}: every LoRA B weight is zero, so the adapter changes nothing")
            say("verifying: loading base + adapter with mlx-lm and generating", fmt)
            sample = mlx_lora.generate_probe(plan.base_model, staged)
            tokenizer = load_tokenizer(str(staged) if (staged / "tokenizer_config.json").is_file() else plan.base_model)
            record.update({"adapter_format": "mlx-lm", "adapter_max_delta": delta})
            record["verify"] = {"loads": True, "sample": sample, "chat_template": bool(tokenizer.chat_template),
                                "tools_in_template": template_supports_tools(tokenizer),
                                "template": template_record(tokenizer)}
        elif fmt == "lora":
            say("copying the adapter", fmt)
            record = build_lora(plan, staged)
            say("verifying: loading base + adapter and generating", fmt)
            record["verify"] = verify_transformers(staged, plan, adapter=True)
        elif fmt == "merged-16bit" and plan.mlx:
            from trainers import mlx_lora

            delta = mlx_lora.adapter_max(plan.checkpoint_dir)
            if delta == 0.0:
                raise ExportError(f"{plan.checkpoint}: every LoRA B weight is zero, so the adapter changes nothing")
            say(f"fusing the adapter into {plan.base_model} with mlx-lm", fmt)
            mlx_lora.fuse(plan.base_model, plan.checkpoint_dir, staged)
            record = {"base_model": plan.base_model, "dtype": "bfloat16", "fused_with": "mlx-lm",
                      "adapter_max_delta": delta}
            say("verifying: reloading with transformers and generating", fmt)
            record["verify"] = verify_transformers(staged, plan)
        elif fmt == "merged-16bit":
            say(f"merging the adapter into {plan.base_model}", fmt)
            record = build_merged_16bit(plan, staged)
            say("verifying: reloading with transformers and generating", fmt)
            record["verify"] = verify_transformers(staged, plan)
        elif fmt == "merged-4bit":
            source = _merged_source(plan, staging, done)
            say("quantizing to 4-bit with bitsandbytes", fmt)
            record = build_merged_4bit(plan, staged, source)
            say("verifying: reloading on the GPU and generating", fmt)
            record["verify"] = verify_transformers(staged, plan, device="cuda")
        else:
            from trainers.gguf import build_gguf

            if merged_for_gguf is None:
                merged_for_gguf = _merged_source(plan, staging, done)
            name = slugify(f"{Path(plan.base_model).name}-{plan.method}")
            record = build_gguf(fmt, merged_for_gguf, staged, name, say)
        record["seconds"] = round(time.monotonic() - started, 1)
        done[fmt] = finish(plan, fmt, staged, record)
        emit("done", format=fmt, path=done[fmt]["path"], record=done[fmt])
    return done


def _merged_source(plan: Plan, staging: Path, done: dict[str, dict[str, Any]]) -> Path:
    """The merged 16-bit model other formats start from: this export's, or a temporary one."""
    if "merged-16bit" in done:
        return Path(done["merged-16bit"]["path"])
    temp = staging / "merged-for-conversion"
    if not (temp / "config.json").is_file():
        say("merging the adapter (temporary, for conversion)")
        if plan.mlx:
            from trainers import mlx_lora

            mlx_lora.fuse(plan.base_model, plan.checkpoint_dir, temp)
        else:
            build_merged_16bit(plan, temp)
    return temp


def _on_signal(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--checkpoint", default="best", help="checkpoint-N, final or best")
    parser.add_argument("--format", action="append", dest="formats", choices=EXPORT_FORMATS, required=True)
    args = parser.parse_args(argv)
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "TOKENIZERS_PARALLELISM"):
        os.environ.setdefault(name, "1" if name != "TOKENIZERS_PARALLELISM" else "false")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    staging: Path | None = None
    try:
        plan = make_plan(args.run_dir.resolve(), args.checkpoint, args.formats)
        emit("start", run_id=plan.run_dir.name, checkpoint=plan.checkpoint, formats=plan.formats,
             base_model=plan.base_model)
        staging = exports_root(plan.run_dir) / f".staging-{plan.checkpoint}-{os.getpid()}"
        staging.mkdir(parents=True)
        done = export(plan, staging)
        emit("finished", checkpoint=plan.checkpoint, exports={f: r["path"] for f, r in done.items()})
        return EXIT_OK
    except ExportError as exc:
        emit("error", message=str(exc))
        return EXIT_USAGE if staging is None else EXIT_FAILED
    except Stopped as exc:
        emit("error", message=f"stopped by {exc}; finished formats were kept, the unfinished one removed")
        return EXIT_STOPPED
    except OSError as exc:
        emit("error", message=f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        traceback.print_exc()
        return EXIT_FAILED
    except Exception as exc:
        emit("error", message=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        return EXIT_FAILED
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
