"""Credentials in URLs: what may be stored or shown of a URL a user typed, and what may not.

`http://user:TOKEN@host/v1?api_key=K` is stored and printed as
`http://***@host/v1?api_key=***`: eval.json, summary.json, report.md, pipeline
files, logs and error messages only ever see the redacted form; the real URL
lives in memory (or in an environment variable the user set) while it is used.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters that carry a credential by their name (matched case-insensitively, as whole words).
SECRET_PARAMS = re.compile(
    r"(^|[_.-])(token|key|apikey|api-key|secret|password|passwd|pwd|auth|authorization|sig|signature|"
    r"credential|credentials|session)($|[_.-])", re.IGNORECASE)
URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def _secret_param(name: str) -> bool:
    return bool(SECRET_PARAMS.search(name))


def redact_url(url: str) -> str:
    """The URL with user info and token-like query parameters masked; anything else unchanged."""
    if not isinstance(url, str) or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # not parseable: show nothing of it rather than guess where the secret is
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_param(name) for name, _ in pairs):
            query = urlencode([(name, MASK if _secret_param(name) else value) for name, value in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_credentials(url: str) -> bool:
    return isinstance(url, str) and redact_url(url) != url


ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def literal_credentials(url: str) -> bool:
    """Whether a URL written into a config holds a credential itself rather than a ${VAR} reference to
    one: `http://user:${EVAL_TOKEN}@host` may be stored, `http://user:TOKEN@host` may not."""
    if not has_credentials(url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return True
    if "@" in parts.netloc:
        user, _, password = parts.netloc.rsplit("@", 1)[0].partition(":")
        secret = password if password else user  # a token alone sits where the user name goes
        if not ENV_REFERENCE.fullmatch(secret):
            return True
    return any(_secret_param(name) and not ENV_REFERENCE.fullmatch(value)
               for name, value in parse_qsl(parts.query, keep_blank_values=True))


def expand_url(url: str, environ: dict[str, str] | None = None) -> str:
    """The URL with each ${VAR} replaced from the environment; ValueError naming a variable that is not set."""
    import os

    environ = os.environ if environ is None else environ

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in environ:
            raise ValueError(f"${{{name}}} in the URL is not set in the environment")
        return environ[name]

    return ENV_REFERENCE.sub(value, url) if isinstance(url, str) else url


def redact_text(text: str) -> str:
    """Every URL in a message, redacted (error messages quote the URL they failed on)."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
