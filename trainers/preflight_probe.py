"""Pre-flight's look at the data through the model's tokenizer and the chat template the run will use.

Reads the resolved config as JSON on stdin, prints one JSON object: token
lengths (as the trainer will tokenize, with its mask), the template the run
would train with and why, and every row whose rendered text or loss mask
would lose data. Run by the app's pre-flight as a child process, since it
imports transformers.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

MAX_FINDINGS = 20


def token_lengths(tokenizer, rows: list[dict[str, Any]], method: str, max_length: int, assistant_only: bool,
                  strategy: str | None, training_template: str | None) -> dict[str, Any]:
    from trainers.chat_templates import MaskError, encode, render

    lengths = []
    # Rows whose learnable part starts past max_length are truncated to nothing: TRL drops them.
    nothing_to_learn = 0
    for row in rows:
        if method == "sft":
            try:
                ids, mask, _ = encode(tokenizer, row["messages"], row.get("tools"), assistant_only=assistant_only,
                                      strategy=strategy, training_template=training_template)
            except (MaskError, ValueError):
                ids = tokenizer.apply_chat_template(row["messages"], tools=row.get("tools") or None, tokenize=True,
                                                    return_dict=True)["input_ids"]
                mask = [1] * len(ids)
            first_learnable = next((i for i, m in enumerate(mask) if m), 0)
        else:
            prompt = render(tokenizer, row["prompt"], row.get("tools"), add_generation_prompt=True)
            full = render(tokenizer, row["prompt"] + row["completion"], row.get("tools"))
            ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            first_learnable = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        lengths.append(len(ids))
        nothing_to_learn += first_learnable >= max_length
    lengths.sort()
    return {
        "rows": len(lengths),
        "mean": sum(lengths) / len(lengths),
        "p50": lengths[len(lengths) // 2],
        "p95": lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)],
        "max": lengths[-1],
        "max_length": max_length,
        "over_max": sum(1 for n in lengths if n > max_length),
        "nothing_to_learn": nothing_to_learn,
    }


def probe(config: dict[str, Any]) -> dict[str, Any]:
    from trainers.chat_templates import (TemplateError, check_rows, choose_template, data_needs_tools,
                                         mask_strategy, missing_tokens, prepare_tokenizer)
    from trainers.data import load_rows
    from trainers.engine import load_tokenizer

    method = config.get("method", "sft")
    rows, report = load_rows(config["dataset"]["path"], method, max_rows=config["dataset"].get("max_rows"))
    tokenizer = load_tokenizer(config)
    setting = str((config.get("model") or {}).get("chat_template") or "auto")
    needs_tools = data_needs_tools(rows)
    result: dict[str, Any] = {}
    try:
        choice = choose_template(tokenizer, setting, needs_tools)
    except TemplateError as exc:
        return {"template_error": str(exc)}
    # What auto would pick, for the fix a refusal suggests.
    if setting != "auto":
        try:
            result["auto_would_pick"] = choose_template(load_tokenizer(config), "auto", needs_tools).name
        except TemplateError:
            result["auto_would_pick"] = None
    choice.added_tokens = missing_tokens(tokenizer, choice)
    prepare_tokenizer(tokenizer, choice)
    assistant_only = method != "sft" or bool((config.get("training") or {}).get("completion_only_loss", True))
    summary, findings = check_rows(tokenizer, rows, method, assistant_only=assistant_only, lines=report.lines)
    choice.mask = summary["mask"]
    result["template"] = choice.to_dict()
    result["template"]["rows_checked"] = summary["rows_checked"]
    result["findings"] = [{"line": report.lines[f.index] if f.index < len(report.lines) else None,
                           "problem": f.problem} for f in findings[:MAX_FINDINGS]]
    result["findings_total"] = len(findings)
    result["rows_with_findings"] = len({f.index for f in findings})
    strategy, training = None, None
    if method == "sft" and assistant_only:
        strategy, training, failed = mask_strategy(tokenizer, rows[:5000])
        strategy = None if failed else strategy
    max_length = int(config["model"].get("max_seq_length", 1024))
    result["tokens"] = token_lengths(tokenizer, rows, method, max_length, assistant_only, strategy, training)
    return result


def main() -> int:
    config = json.load(sys.stdin)
    print(json.dumps(probe(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
