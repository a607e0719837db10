"""Side-by-side run configs: flattened to dotted keys, with the keys that differ marked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MISSING = "—"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"training": {"learning_rate": 2e-4}}` -> `{"training.learning_rate": "0.0002"}`; lists stay one cell."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ", ".join(str(v) for v in value) if value else "[]"
        else:
            flat[name] = MISSING if value is None else str(value)
    return flat


@dataclass
class ConfigRow:
    key: str
    values: list[str]

    @property
    def differs(self) -> bool:
        return len(set(self.values)) > 1


def config_rows(configs: list[dict[str, Any]]) -> list[ConfigRow]:
    """One row per key in any config, in first-seen order (so sections stay together)."""
    flats = [flatten(c) for c in configs]
    keys: dict[str, None] = {}
    for flat in flats:
        keys.update(dict.fromkeys(flat))
    return [ConfigRow(key, [flat.get(key, MISSING) for flat in flats]) for key in keys]
