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
TEMPLATE_ROWS = 5000  # rows rendered and checked against the template; lengths are counted over all
# A token is rarely longer than this many characters: a message cut to max_length times it still has
# more than max_length tokens, so a huge row is counted from a bounded prefix of each message.
CHARS_PER_TOKEN_BOUND = 32


def bounded(row: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """The row with each message's content cut to max_chars: what lies past it is past max_seq_length
    anyway, and rendering or tokenizing a 50 MB row whole costs gigabytes."""
    def cut(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**m, "content": m["content"][:max_chars]} if len(m.get("content") or "") > max_chars else m
                for m in messages]

    return {key: cut(value) if key in ("messages", "prompt", "completion") else value for key, value in row.items()}


def stream_rows(config: dict[str, Any], method: str, limit: int | None = None):
    """(file line, bounded row), one at a time: pre-flight never holds the dataset."""
    from trainers.data import DatasetReport, iter_rows

    dataset = config["dataset"]
    max_chars = int(config["model"].get("max_seq_length", 1024)) * CHARS_PER_TOKEN_BOUND
    report = DatasetReport(path=dataset["path"], method=method)
    for count, (line, row) in enumerate(iter_rows(dataset["path"], method, report, max_rows=dataset.get("max_rows"))):
        if limit is not None and count >= limit:
            return
        yield line, bounded(row, max_chars)


def token_lengths(tokenizer, rows, method: str, max_length: int, assistant_only: bool,
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
    if not lengths:
        raise SystemExit("no rows to count")
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
    from trainers.engine import load_tokenizer

    method = config.get("method", "sft")
    sample = list(stream_rows(config, method, TEMPLATE_ROWS))
    lines, rows = [line for line, _ in sample], [row for _, row in sample]
    del sample
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
    summary, findings = check_rows(tokenizer, rows, method, assistant_only=assistant_only, lines=lines,
                                   limit=TEMPLATE_ROWS)
    choice.mask = summary["mask"]
    result["template"] = choice.to_dict()
    result["template"]["rows_checked"] = summary["rows_checked"]
    result["findings"] = [{"line": lines[f.index] if f.index < len(lines) else None,
                           "problem": f.problem} for f in findings[:MAX_FINDINGS]]
    result["findings_total"] = len(findings)
    result["rows_with_findings"] = len({f.index for f in findings})
    strategy, training = None, None
    if method == "sft" and assistant_only:
        strategy, training, failed = mask_strategy(tokenizer, rows)
        strategy = None if failed else strategy
    del rows
    max_length = int(config["model"].get("max_seq_length", 1024))
    result["tokens"] = token_lengths(tokenizer, (row for _, row in stream_rows(config, method)), method, max_length,
                                     assistant_only, strategy, training)
    return result


def main() -> int:
    config = json.load(sys.stdin)
    print(json.dumps(probe(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
