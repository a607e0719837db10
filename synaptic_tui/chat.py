"""Chats with served models: who each side of a chat talks to, the conversation kept per model, replies read.

History is one JSONL file per model, `runs/<run>/chats/<model>.jsonl` for a run's
checkpoints and its base model (`runs/.chats/` for models outside a run). Each
conversation starts with a header line (its id, system prompt, tools, the case
it came from); every message is appended as it is sent or answered, so a
server that dies mid-reply loses nothing but the reply. No textual import: the
Chat screen and tests use it alike.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synaptic_tui.runs import slugify, utc_now

CHATS_DIR = "chats"


@dataclass(eq=False)  # two columns may show the same model: a side is itself, not its fields
class ChatSide:
    """One model of a chat: a target `synaptic-tui serve` starts (ref), or a server that is already up (url)."""

    label: str
    ref: str | None = None  # RUN:CHECKPOINT, RUN:base or a model: served on demand
    url: str | None = None  # or a server given as it is
    model: str | None = None
    tool_format: str | None = None
    history: Path | None = None
    engine: str | None = None  # the engine that serves it, once known
    tool_parser: str | None = None

    @property
    def ready(self) -> bool:
        return bool(self.url and self.model)


def history_path(runs_dir: Path, run_dir: Path | None, served_name: str) -> Path:
    root = Path(run_dir) / CHATS_DIR if run_dir is not None else Path(runs_dir) / f".{CHATS_DIR}"
    return root / f"{slugify(served_name, max_len=80)}.jsonl"


def side_for(ref: str, runs_dir: Path) -> ChatSide:
    """The side of a chat for RUN[:CHECKPOINT] | MODEL, its history file and the format its calls are read in."""
    from synaptic_tui.servers.targets import resolve_target

    target = resolve_target(ref, runs_dir)
    return ChatSide(target.label, ref=target.portable_ref, tool_format=target.tool_format,
                    history=history_path(runs_dir, target.run_dir, target.served_name))


@dataclass
class Conversation:
    """The last conversation of a history file: its header and its messages, as sent to the server."""

    conversation_id: str
    system: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    case: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)  # user/assistant turns, plus error records

    def for_request(self) -> list[dict[str, Any]]:
        """What the server is sent: the system prompt, then every user and assistant turn (never an error)."""
        sent = [{"role": "system", "content": self.system}] if self.system else []
        for message in self.messages:
            if message["role"] == "user":
                sent.append({"role": "user", "content": message["content"]})
            elif message["role"] == "assistant" and not message.get("interrupted"):
                turn = {"role": "assistant", "content": message.get("content") or ""}
                if message.get("tool_calls"):
                    turn["tool_calls"] = message["tool_calls"]
                sent.append(turn)
        return sent


def new_conversation(path: Path | None, system: str | None = None, tools: list[dict[str, Any]] | None = None,
                     case: str | None = None) -> Conversation:
    conversation = Conversation(uuid.uuid4().hex[:12], system or None, list(tools or []), case)
    append(path, {"conversation": conversation.conversation_id, "started_at": utc_now(), "system": conversation.system,
                  "tools": conversation.tools, "case": case})
    return conversation


def append(path: Path | None, record: dict[str, Any]) -> None:
    """One line, flushed at once: what was sent or answered is on disk before anything else happens."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()


def load_last(path: Path | None) -> Conversation | None:
    """The last conversation in a history file (a line cut short by a crash is skipped)."""
    if path is None:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    current: Conversation | None = None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        if "conversation" in record and "role" not in record:
            current = Conversation(str(record["conversation"]), record.get("system"), record.get("tools") or [],
                                   record.get("case"))
        elif current is not None and record.get("role") in ("user", "assistant", "error"):
            current.messages.append(record)
    return current


@dataclass
class ReadCall:
    name: str
    arguments: Any
    source: str  # native (the server parsed it) or text (our parsers read it from the reply)
    check: str  # what the schema check found
    ok: bool | None  # None: nothing to check against


@dataclass
class ReadReply:
    prose: str
    calls: list[ReadCall]
    parse_errors: list[str]


def read_reply(content: str, tool_calls: list[Any] | None, tools: list[dict[str, Any]] | None,
               tool_format: str | None) -> ReadReply:
    """The reply as the evaluator reads it: its calls (the server's, else parsed from the text in the run's
    format), each checked against the offered tool's schema, and the prose around them."""
    from evaluator.prompts import tool_schemas
    from evaluator.scoring import read_response, validate

    response = read_response(content, tool_calls, format=tool_format)
    schemas = tool_schemas(tools or [])
    calls = []
    for call in response.calls:
        if not schemas:
            check, ok = "no tools offered: arguments not checked", None
        elif call.name not in schemas:
            check, ok = f"{call.name} is not one of the offered tools ({', '.join(schemas)})", False
        elif not isinstance(call.arguments, dict):
            check, ok = f"arguments are not a JSON object: {str(call.arguments)[:80]!r}", False
        else:
            errors = validate(call.arguments, schemas[call.name])
            check, ok = ("schema ok", True) if not errors else ("; ".join(errors), False)
        calls.append(ReadCall(call.name, call.arguments, call.source, check, ok))
    return ReadReply(response.prose, calls, response.parse_errors)


def tokens_per_second(completion_tokens: int | None, latency_s: float, first_token_s: float | None) -> float | None:
    """Generation speed: tokens after the first over the time after the first, else over the whole reply."""
    if not completion_tokens:
        return None
    if first_token_s is not None and latency_s - first_token_s > 0 and completion_tokens > 1:
        return (completion_tokens - 1) / (latency_s - first_token_s)
    return completion_tokens / latency_s if latency_s > 0 else None
