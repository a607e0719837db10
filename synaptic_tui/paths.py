"""Where synaptic-tui finds its shipped files and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """styles/ or examples/: beside the package in a checkout or editable install, inside it in a wheel."""
    source = _PACKAGE.parent / name
    return source if source.is_dir() else _PACKAGE / name


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "synaptic-tui"


def demo_model_dir() -> Path:
    return cache_dir() / "demo-model"


def display_path(path: Path | str) -> str:
    """A path as a person wants to read it: relative to the current dir, else with ~ for home."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        pass
    try:
        return str(Path("~") / path.relative_to(Path.home()))
    except ValueError:
        return str(path)
