"""Turning checked rows (trainers.data) into Hugging Face datasets for TRL."""

from __future__ import annotations

import json
from typing import Any


def to_dataset(rows: list[dict[str, Any]], method: str):
    """A datasets.Dataset whose message columns are stored as JSON.

    Arrow would otherwise merge every row's tool-call arguments into one struct
    type and hand each call back with the other calls' keys set to null, which
    the chat template then renders into the training text.
    """
    try:
        from datasets import Dataset, Features, Json, List, Value
    except ImportError:  # datasets < 5 (the Unsloth environment pins it): see _without_json_feature
        return _without_json_feature(rows)

    if method == "kto":
        features = {"prompt": List(Json()), "completion": List(Json()), "label": Value("bool")}
    else:
        features = {"messages": List(Json())}
    columns: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in features}
    if any(row.get("tools") for row in rows):
        # TRL json.loads a string tools column before handing it to the chat template.
        features["tools"] = Value("string")
        columns["tools"] = [json.dumps(row["tools"]) if row.get("tools") else None for row in rows]
    return Dataset.from_dict(columns, features=Features(features))


def split(dataset, test_size: float, seed: int):
    """(train, eval or None): eval only when asked for and there are rows enough for both."""
    if not test_size or len(dataset) < 4:
        return dataset, None
    parts = dataset.train_test_split(test_size=test_size, seed=seed)
    return parts["train"], parts["test"]


def _without_json_feature(rows: list[dict[str, Any]]):
    """datasets < 5 has no Json feature: pass tool-call arguments as JSON strings instead.

    Strings survive Arrow's schema merging intact; chat templates written for
    OpenAI data (ours, Qwen's, Llama's recent ones) accept arguments as a string.
    """
    from datasets import Dataset

    def encode(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for message in messages:
            message = dict(message)
            if message.get("tool_calls"):
                message["tool_calls"] = [
                    {**call, "function": {**call["function"], "arguments": json.dumps(call["function"]["arguments"])}}
                    for call in message["tool_calls"]
                ]
            out.append(message)
        return out

    prepared = []
    for row in rows:
        row = {key: encode(value) if key in ("messages", "prompt", "completion") else value for key, value in row.items()}
        if "tools" in row:
            row["tools"] = json.dumps(row["tools"])
        prepared.append(row)
    return Dataset.from_list(prepared)
