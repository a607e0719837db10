"""Token lengths of a dataset through the model's real tokenizer and chat template.

Reads the resolved config as JSON on stdin, prints one JSON object. Run by the
app's pre-flight as a child process, since it imports transformers.
"""

from __future__ import annotations

import json
import math
import sys


# A token is rarely longer than this many characters: a message cut to max_length times it still has
# more than max_length tokens, so a huge row is counted from a bounded prefix of each message.
CHARS_PER_TOKEN_BOUND = 32


def bounded(messages: list[dict], max_chars: int) -> list[dict]:
    """Messages with each content cut to max_chars: what lies past it is past max_seq_length anyway, and
    tokenizing a 50 MB row whole costs gigabytes."""
    return [{**m, "content": m["content"][:max_chars]} if len(m.get("content") or "") > max_chars else m
            for m in messages]


def main() -> int:
    config = json.load(sys.stdin)
    from trainers.data import DatasetReport, iter_rows
    from trainers.engine import load_tokenizer

    method = config.get("method", "sft")
    report = DatasetReport(path=config["dataset"]["path"], method=method)
    rows = (row for _, row in iter_rows(config["dataset"]["path"], method, report,
                                       max_rows=config["dataset"].get("max_rows")))
    tokenizer = load_tokenizer(config)
    max_length = int(config["model"].get("max_seq_length", 1024))
    max_chars = max_length * CHARS_PER_TOKEN_BOUND
    lengths = []
    # Rows whose learnable part starts past max_length are truncated to nothing: TRL drops them.
    nothing_to_learn = 0
    for row in rows:
        for key in ("messages", "prompt", "completion"):
            if key in row:
                row[key] = bounded(row[key], max_chars)
        if method == "sft":
            encoded = tokenizer.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=True,
                                                    return_dict=True, return_assistant_tokens_mask=True)
            ids, mask = encoded["input_ids"], encoded.get("assistant_masks") or []
            first_learnable = next((i for i, m in enumerate(mask) if m), 0)
        else:
            ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tools=row.get("tools"),
                                                tokenize=True, return_dict=True)["input_ids"]
            prompt_ids = tokenizer.apply_chat_template(row["prompt"], tools=row.get("tools"), tokenize=True,
                                                       return_dict=True, add_generation_prompt=True)["input_ids"]
            first_learnable = len(prompt_ids)
        lengths.append(len(ids))
        nothing_to_learn += first_learnable >= max_length
    lengths.sort()
    print(json.dumps({
        "rows": len(lengths),
        "mean": sum(lengths) / len(lengths),
        "p50": lengths[len(lengths) // 2],
        "p95": lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)],
        "max": lengths[-1],
        "max_length": max_length,
        "over_max": sum(1 for n in lengths if n > max_length),
        "nothing_to_learn": nothing_to_learn,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
