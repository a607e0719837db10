"""The model card for an uploaded fine-tune, from what the run directory knows: config, curves, evals, exports.

Built with huggingface_hub's ModelCard / ModelCardData (metadata as the Hub
reads it) around a body we write, so no Jinja is needed in the app.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from synaptic_tui.runs import RunInfo, read_run_config

LIBRARY = {"lora": "peft", "merged-16bit": "transformers", "merged-4bit": "transformers"}


def local_base_warning(run: RunInfo) -> str | None:
    """A card naming a local path as its base model credits nothing on the Hub and shows a path of this
    machine to everyone who reads it: said in the upload preview, before anything is uploaded."""
    base = str((read_run_config(run.path).get("model") or {}).get("name") or run.model)
    if not base or _hub_id(base) is not None:
        return None
    return (f"the base model is a local path ({base}): the card cannot link it on the Hub and shows that "
            "path to its readers; set model.name in the run's config to the Hub id it came from (owner/name)")


def _hub_id(name: str) -> str | None:
    """A Hub model id (owner/name), or None for a local path the Hub would not know."""
    if not name or Path(name).expanduser().exists() or name.startswith(("/", ".", "~")):
        return None
    return name if name.count("/") == 1 else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def curve_summary(run: RunInfo) -> dict[str, Any]:
    """Final and best values of the curves a reader of the card cares about."""
    from synaptic_tui.follow import JsonlFollower
    from synaptic_tui.scoring import kto_score

    rows = JsonlFollower(run.metrics_path).read_all() if run.metrics_path else []
    summary: dict[str, Any] = {"steps": max((int(r["step"]) for r in rows if isinstance(r.get("step"), int)),
                                            default=0)}
    keys = ["loss", "eval_loss"] + (["kl", "rewards/margins"] if run.method == "kto" else [])
    for key in keys:
        values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            lower_is_better = key in ("loss", "eval_loss")
            summary[key] = {"final": values[-1], "best": min(values) if lower_is_better else max(values)}
    if run.method == "kto":
        scores = [s for s in (kto_score(r) for r in rows) if s is not None]
        if scores:
            summary["score"] = {"final": scores[-1], "best": max(scores)}
    return summary


def eval_summary(run: RunInfo) -> dict[str, Any] | None:
    """The newest finished eval of the run, if it has one."""
    root = run.path / "evals"
    for path in sorted(root.glob("*/summary.json"), reverse=True):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("total"):
            return {**data, "eval_id": path.parent.name}
    return None


def build_model_card(run: RunInfo, checkpoint: str, formats: list[str], repo_id: str,
                     records: dict[str, dict[str, Any]] | None = None):
    """A huggingface_hub ModelCard; `str(card)` is the README.md the Hub shows."""
    from huggingface_hub import ModelCard, ModelCardData

    config = read_run_config(run.path)
    model = config.get("model") or {}
    lora = config.get("lora") or {}
    training = config.get("training") or {}
    dataset = config.get("dataset") or {}
    base = str(model.get("name") or run.model)
    base_id = _hub_id(base)
    mlx = config.get("platform") == "mlx"  # its adapter is mlx-lm's, loaded with mlx-lm, not PEFT
    weights = [f for f in formats if not f.startswith("gguf-")]
    library = ("mlx" if mlx and weights[0] == "lora" else LIBRARY.get(weights[0], "transformers")) if weights else "gguf"
    tags = ["synaptic-tui", run.method, "lora", "tool-calling"] + (["mlx"] if mlx else []) \
        + (["gguf"] if len(weights) < len(formats) else [])
    data = ModelCardData(
        base_model=base_id, library_name=library, pipeline_tag="text-generation", tags=tags,
        datasets=[dataset["hub_name"]] if dataset.get("hub_name") else None, license=config.get("license"),
    )
    curves = curve_summary(run)
    from synaptic_tui.monitor import rank_run

    ranked = rank_run(run)
    best = ranked.score_of(checkpoint) if checkpoint == ranked.best else None
    checkpoint_cell = checkpoint + (f" (the run's best by {best['metric']} {_fmt(best['value'])})" if best else "")
    lines = [
        f"# {repo_id.split('/')[-1]}", "",
        f"A {run.method.upper()} fine-tune of `{base}` with a LoRA adapter, trained with synaptic-tui "
        f"(run `{run.run_id}`, {checkpoint}).", "",
        "## Training", "",
        "| setting | value |", "|---|---|",
        f"| method | {run.method} |",
        f"| base model | `{base}` |",
        f"| dataset | `{dataset.get('hub_name') or Path(str(dataset.get('path') or run.dataset)).name}` |",
        f"| checkpoint | {checkpoint_cell} |",
        f"| steps | {curves['steps']} |",
    ]
    for key in ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
                "max_steps"):
        if training.get(key) not in (None, "", -1):
            lines.append(f"| {key} | {_fmt(training[key])} |")
    lines.append(f"| max_seq_length | {model.get('max_seq_length', 'n/a')} |")
    lines.append(f"| LoRA | r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
                 f"targets={lora.get('target_modules')} |")
    lines += ["", "## Training curves", "", "| metric | final | best |", "|---|---|---|"]
    for key in ("loss", "eval_loss", "kl", "rewards/margins", "score"):
        if key in curves:
            label = "score (margin / KL)" if key == "score" else key
            lines.append(f"| {label} | {_fmt(curves[key]['final'])} | {_fmt(curves[key]['best'])} |")
    evaluation = eval_summary(run)
    if evaluation:
        lines += ["", "## Evaluation", "",
                  f"Eval `{evaluation['eval_id']}`: {evaluation.get('passed')}/{evaluation.get('total')} tool-calling "
                  f"cases passed ({_fmt((evaluation.get('pass_rate') or 0) * 100)}%).", "",
                  "| tag | passed | total |", "|---|---|---|"]
        for tag, row in (evaluation.get("per_tag") or {}).items():
            lines.append(f"| {tag} | {row.get('passed')} | {row.get('total')} |")
    lines += ["", "## Files", ""]
    for fmt in formats:
        record = (records or {}).get(fmt) or {}
        where = "the repository root" if folder_in_repo(fmt, formats) == "" else f"`{folder_in_repo(fmt, formats)}/`"
        verified = record.get("verify") or {}
        tools = verified.get("tools_in_template")
        note = "" if tools is None else (" Its chat template renders tools." if tools else
                                         " Its chat template does not render tools.")
        lines.append(f"- **{fmt}** in {where}.{note}{pre_tokenizer_note(record)}")
    lines += ["", "## How to use", ""]
    if "lora" in formats and mlx:
        sub = folder_in_repo("lora", formats)
        lines += ["With mlx-lm (the adapter is in mlx-lm's format):", "", "```python",
                  "from huggingface_hub import snapshot_download", "from mlx_lm import generate, load", "",
                  f'adapters = snapshot_download("{repo_id}"' + (f', allow_patterns=["{sub}/*"])' if sub else ")")
                  + (f' + "/{sub}"' if sub else ""),
                  f'model, tokenizer = load("{base}", adapter_path=adapters)', "```", ""]
    elif "lora" in formats:
        sub = folder_in_repo("lora", formats)
        lines += ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "", f'base = AutoModelForCausalLM.from_pretrained("{base}")',
                  f'model = PeftModel.from_pretrained(base, "{repo_id}"' + (f', subfolder="{sub}")' if sub else ")"),
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"' + (f', subfolder="{sub}")' if sub else ")"),
                  "```", ""]
    for fmt in ("merged-16bit", "merged-4bit"):
        if fmt in formats:
            sub = folder_in_repo(fmt, formats)
            extra = f', subfolder="{sub}"' if sub else ""
            lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                      f'model = AutoModelForCausalLM.from_pretrained("{repo_id}"{extra})',
                      f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{extra})', "```", ""]
    ggufs = [f for f in formats if f.startswith("gguf-")]
    if ggufs:
        quant = ggufs[0].split("-", 1)[1].upper()
        lines += ["With Ollama (the GGUF carries the chat template):", "", "```",
                  f"ollama run hf.co/{repo_id}:{quant}", "```", "",
                  "or from the downloaded file with the Modelfile beside it: "
                  f"`ollama create {repo_id.split('/')[-1].lower()} -f Modelfile.{ggufs[0].split('-', 1)[1]}`.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines).rstrip() + "\n")


def pre_tokenizer_note(record: dict[str, Any]) -> str:
    """What a GGUF's reader must know when llama.cpp did not recognise the tokenizer and a stand-in was used."""
    fallback = record.get("pre_tokenizer_fallback")
    if not fallback:
        return ""
    return (f" llama.cpp did not recognise this tokenizer's pre-tokenizer, so the GGUF uses `{fallback}`'s "
            "(right for byte-level BPE tokenizers that split text as GPT-2 does; check the tokenization of "
            "other tokenizers before relying on it).")


def folder_in_repo(fmt: str, formats: list[str]) -> str:
    """Where a format's files go in the repo: the first weights format and every GGUF at the root, others in a folder."""
    if fmt.startswith("gguf-"):
        return ""
    weights = [f for f in formats if not f.startswith("gguf-")]
    return "" if weights and weights[0] == fmt else fmt


