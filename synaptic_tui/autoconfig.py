"""`train --auto`: propose batch size, LoRA rank/alpha, learning rate and max length from model and data size.

Presets by parameter-count band (the original tuner's bands), then adjusted
for the dataset: small data gets a smaller rank and batch, and max length is
cut to what the rows need. The result is a list of changes the user sees as a
diff before anything uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# (upper bound in billions of parameters, preset)
BANDS: list[tuple[float, dict[str, Any]]] = [
    (0.2, {"lora.r": 8, "lora.alpha": 16, "training.per_device_train_batch_size": 8,
           "training.learning_rate": 1e-4, "model.max_seq_length": 512}),
    (1.0, {"lora.r": 16, "lora.alpha": 32, "training.per_device_train_batch_size": 4,
           "training.learning_rate": 8e-5, "model.max_seq_length": 1024}),
    (4.0, {"lora.r": 16, "lora.alpha": 32, "training.per_device_train_batch_size": 2,
           "training.learning_rate": 5e-5, "model.max_seq_length": 2048}),
    (10.0, {"lora.r": 32, "lora.alpha": 64, "training.per_device_train_batch_size": 1,
            "training.learning_rate": 3e-5, "model.max_seq_length": 2048}),
    (float("inf"), {"lora.r": 64, "lora.alpha": 128, "training.per_device_train_batch_size": 1,
                    "training.learning_rate": 2e-5, "model.max_seq_length": 4096}),
]
SMALL_DATA_TOKENS = 1_000_000


@dataclass
class Change:
    key: str
    old: Any
    new: Any
    why: str

    def __str__(self) -> str:
        return f"{self.key}: {self.old} -> {self.new}  ({self.why})"


def get_path(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def propose(config: dict[str, Any], parameters: int, rows: int | None = None,
            token_stats: dict[str, Any] | None = None) -> list[Change]:
    billions = parameters / 1e9
    preset = dict(next(p for bound, p in BANDS if billions < bound))
    why = {key: f"preset for a {billions:.2g}B model" for key in preset}
    total_tokens = token_stats["mean"] * token_stats["rows"] if token_stats else None
    if total_tokens is not None and total_tokens < SMALL_DATA_TOKENS:
        for key, cap in (("training.per_device_train_batch_size", 4), ("lora.r", 16)):
            if preset[key] > cap:
                preset[key], why[key] = cap, f"{total_tokens / 1e3:.0f}k tokens of data is small"
        preset["lora.alpha"] = 2 * preset["lora.r"]
    if token_stats:
        # The data decides the length: the preset's length is only a guess made without it,
        # and cutting below the rows' length can leave nothing to learn from.
        needed = 64
        while needed < token_stats["p95"]:
            needed *= 2
        preset["model.max_seq_length"], why["model.max_seq_length"] = needed, f"p95 row is {token_stats['p95']} tokens"
    if config.get("method") == "kto":
        # KTO wants a gentler rate than SFT; its KL estimate needs at least two rows per batch.
        preset["training.learning_rate"] = preset["training.learning_rate"] * 0.5
        why["training.learning_rate"] = "KTO on LoRA: half the SFT preset"
        if preset["training.per_device_train_batch_size"] < 2:
            preset["training.per_device_train_batch_size"] = 2
            why["training.per_device_train_batch_size"] = "KTO needs 2+ rows per batch for its KL estimate"
    if rows is not None and rows < preset["training.per_device_train_batch_size"]:
        preset["training.per_device_train_batch_size"] = max(2 if config.get("method") == "kto" else 1, rows)
        why["training.per_device_train_batch_size"] = f"only {rows} rows"
    changes = []
    for key, value in preset.items():
        old = get_path(config, key)
        if old != value:
            changes.append(Change(key, old, value, why[key]))
    return changes


def apply(config: dict[str, Any], changes: list[Change]) -> None:
    for change in changes:
        set_path(config, change.key, change.new)
