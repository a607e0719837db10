"""Finding the Hugging Face token, and keeping it out of every message.

Order: $HF_TOKEN, $HUGGING_FACE_HUB_TOKEN, a `.env` in the working directory,
then huggingface_hub's login cache. The token itself is never printed or
logged here; callers show only where it came from.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
LOGIN_SOURCE = "huggingface-cli login"
NOT_SET = "not set"


def _dotenv_value(raw: str) -> str:
    """A `.env` value as a shell would read it: quotes removed, a trailing ` # comment` dropped."""
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        end = raw.find(raw[0], 1)
        # An unclosed quote is taken literally rather than guessed at.
        return raw[1:end] if end > 0 else raw
    return raw.split(" #", 1)[0].split("\t#", 1)[0].strip()


def read_dotenv_token(path: Path) -> str | None:
    """HF_TOKEN (else HUGGING_FACE_HUB_TOKEN) from a `.env` file; the last assignment wins, as in a shell."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    found: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export") and line[6:7] in (" ", "\t"):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key in ENV_NAMES:
            found[key] = _dotenv_value(value)
    for name in ENV_NAMES:
        if found.get(name):
            return found[name]
    return None


def read_login_cache() -> str | None:
    """The token `hf auth login` stored, at the path huggingface_hub itself uses.

    `huggingface_hub.get_token()` would also read the environment (and may try
    to refresh OAuth tokens over the network), so only its token path is used.
    The library is imported here, not at module level: it is slow to import.
    """
    from huggingface_hub import constants

    try:
        token = Path(constants.HF_TOKEN_PATH).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def find_hf_token(cwd: Path | None = None) -> tuple[str | None, str]:
    """(token or None, source): source is 'HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', '.env',
    'huggingface-cli login', or 'not set'."""
    for name in ENV_NAMES:
        value = os.environ.get(name, "").strip()
        if value:
            return value, name
    token = read_dotenv_token(Path(cwd if cwd is not None else Path.cwd()) / ".env")
    if token:
        return token, ".env"
    token = read_login_cache()
    if token:
        return token, LOGIN_SOURCE
    return None, NOT_SET


def redact(text: str, token: str | None) -> str:
    """The text with the token (if any) replaced by `hf_***`, for any message that might quote it."""
    return text.replace(token, "hf_***") if token else text
