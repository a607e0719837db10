"""Server-side tool-call parsing for the format a run's chat template writes.

vLLM takes a parser by name (`--tool-call-parser`). transformers serve and
mlx_lm.server read theirs from the tokenizer's config (`response_template`,
`tool_parser_type`) and guess wrongly or not at all for a model whose family
never wrote tool calls (SmolLM2 trained with chatml-tools, say). Rather than
touch a checkpoint or an export, the server gets a view of the model: a
directory of links to its files with a tokenizer_config.json that names the
parser. Formats no engine parser reads (bare JSON) stay with the evaluator's
text parsers (`--tool-format`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

VLLM_PARSERS = {"hermes": "hermes", "llama3_json": "llama3_json", "mistral": "mistral"}
MLX_PARSERS = {"hermes": "json_tools", "mistral": "mistral"}

# transformers' declarative response parser for <tool_call> JSON in a ChatML turn (its own Qwen2 entry,
# without the reasoning field a ChatML model trained by us never writes).
CHATML_HERMES_RESPONSE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open_pattern": r"\s*<tool_call>",
            "close": "</tool_call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"\s*(?:<\|im_end\|>|<\|endoftext\|>)", "content": "text"},
    },
}


def transformers_response_template(tool_format: str | None, template: str | None) -> dict[str, Any] | None:
    """The response template for a run's format, where one is known to match what it writes."""
    if tool_format == "hermes" and template in ("chatml-tools", None):
        return CHATML_HERMES_RESPONSE
    return None


def model_view(model_dir: Path, view: Path, extra_config: dict[str, Any]) -> Path:
    """A directory that is `model_dir` with `extra_config` merged into its tokenizer_config.json.

    Every other file is a symbolic link, so no weights are copied.
    """
    model_dir, view = Path(model_dir).resolve(), Path(view)
    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.name != "tokenizer_config.json":
            os.symlink(item, view / item.name)
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    config.update(extra_config)
    (view / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    return view
