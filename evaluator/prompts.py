"""Prompt sets: load and check the original Synaptic Tuner format (JSON list, {"cases": [...]}, or JSONL).

Every load error names the file, the case (index, line for JSONL, id) and the field,
so a broken prompt set is fixed from the message alone.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

CASE_FIELDS = ("id", "question", "system", "tags", "expected_tools", "expected_context", "tools", "ordered")
SET_FIELDS = ("cases", "tools", "name", "description")


class PromptSetError(ValueError):
    """A prompt set that cannot be used; the message says where and why."""


@dataclass
class Case:
    id: str
    question: str
    system: str | None = None
    tags: list[str] = field(default_factory=list)
    # None: the case does not score tool use at all; []: the model must not call a tool.
    expected_tools: list[str] | None = None
    # {"sessionId": "sess_1"} (each key must carry that value) or ["sess_1"] (each value must appear).
    expected_context: dict[str, Any] | list[str] | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    ordered: bool = False

    def messages(self) -> list[dict[str, Any]]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": self.question}]

    def tool_schemas(self) -> dict[str, dict[str, Any]]:
        """Offered tools by name -> their parameters schema."""
        return {t["function"]["name"]: t["function"].get("parameters") or {} for t in self.tools}


@dataclass
class PromptSet:
    path: Path
    cases: list[Case]
    sha256: str
    warnings: list[str] = field(default_factory=list)

    @property
    def tags(self) -> list[str]:
        return sorted({tag for case in self.cases for tag in case.tags})


@dataclass
class PromptSetInfo:
    """What a picker shows: the file, its case count and tags, or why it does not load."""

    path: Path
    name: str
    count: int = 0
    tags: list[str] = field(default_factory=list)
    error: str | None = None


def _where(path: Path, index: int, line: int | None, case_id: Any = None) -> str:
    place = f"{path}:{line}" if line else str(path)
    ident = f" (id {case_id!r})" if isinstance(case_id, (str, int)) and not isinstance(case_id, bool) else ""
    return f"{place}: case {index + 1}{ident}"


def _normalise_tools(value: Any, where: str, name: str = "tools") -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise PromptSetError(f"{where}: {name}: must be a list of function schemas")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise PromptSetError(f"{where}: {name}[{i}]: must be an object")
        # OpenAI/Ollama shape {"type": "function", "function": {...}}, or the bare function object.
        function = tool.get("function", tool)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise PromptSetError(f"{where}: {name}[{i}].function.name: must be a non-empty string")
        params = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise PromptSetError(f"{where}: {name}[{i}].function.parameters: must be a JSON schema object")
        tools.append({"type": "function", "function": {**function, "parameters": params}})
    return tools


def _string_list(value: Any, where: str, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PromptSetError(f"{where}: {name}: must be a list of strings")
    return list(value)


def _parse_case(raw: Any, index: int, line: int | None, path: Path, shared_tools: list[dict[str, Any]],
                warnings: list[str]) -> Case:
    if not isinstance(raw, dict):
        raise PromptSetError(f"{_where(path, index, line)}: must be an object, got {type(raw).__name__}")
    case_id = raw.get("id")
    where = _where(path, index, line, case_id)
    if isinstance(case_id, bool) or not isinstance(case_id, (str, int)) or case_id == "":
        raise PromptSetError(f"{where}: id: required, a string or number")
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise PromptSetError(f"{where}: question: required, a non-empty string")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise PromptSetError(f"{where}: system: must be a string")
    tags = _string_list(raw.get("tags", []), where, "tags")
    expected_tools = raw.get("expected_tools")
    if expected_tools is not None:
        expected_tools = _string_list(expected_tools, where, "expected_tools")
    context = raw.get("expected_context")
    if context is not None:
        if isinstance(context, dict):
            bad = [k for k, v in context.items() if not isinstance(v, (str, int, float)) or isinstance(v, bool)]
            if bad:
                raise PromptSetError(f"{where}: expected_context.{bad[0]}: must be a string or number")
        else:
            context = _string_list(context, where, "expected_context")
    tools = _normalise_tools(raw["tools"], where) if "tools" in raw else shared_tools
    ordered = raw.get("ordered", False)
    if not isinstance(ordered, bool):
        raise PromptSetError(f"{where}: ordered: must be true or false")
    offered = [t["function"]["name"] for t in tools]
    if expected_tools and offered:
        missing = [name for name in expected_tools if name not in offered]
        if missing:
            raise PromptSetError(f"{where}: expected_tools: {missing[0]!r} is not among the tools offered "
                                 f"({', '.join(offered)})")
    for key in raw:
        if key not in CASE_FIELDS:
            close = difflib.get_close_matches(key, CASE_FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            warnings.append(f"{where}: unknown field {key!r} ignored{hint}")
    return Case(id=str(case_id), question=question, system=system, tags=tags, expected_tools=expected_tools,
                expected_context=context, tools=tools, ordered=ordered)


def _jsonl_rows(text: str, path: Path) -> list[tuple[Any, int]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((json.loads(line), number))
        except json.JSONDecodeError as exc:
            raise PromptSetError(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    return rows


def load_prompt_set(path: str | Path) -> PromptSet:
    """Load and check a prompt set, raising PromptSetError with file, case and field."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptSetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptSetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    shared_tools: list[dict[str, Any]] = []
    rows: list[tuple[Any, int | None]]
    if path.suffix == ".jsonl":
        rows = list(_jsonl_rows(text, path))
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # several objects, one a line: JSONL under another name
                rows = list(_jsonl_rows(text, path))
                document = None
            else:
                raise PromptSetError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if document is not None:
            if isinstance(document, dict):
                if not isinstance(document.get("cases"), list):
                    raise PromptSetError(f"{path}: cases: a prompt set object needs a 'cases' list")
                if "tools" in document:
                    shared_tools = _normalise_tools(document["tools"], str(path))
                cases_raw = document["cases"]
            elif isinstance(document, list):
                cases_raw = document
            else:
                raise PromptSetError(f"{path}: expected a list of cases or an object with 'cases'")
            rows = [(raw, None) for raw in cases_raw]
    warnings: list[str] = []
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for index, (raw, line) in enumerate(rows):
        case = _parse_case(raw, index, line, path, shared_tools, warnings)
        if case.id in seen:
            raise PromptSetError(f"{_where(path, index, line, case.id)}: id: duplicate of case {seen[case.id] + 1}")
        seen[case.id] = index
        cases.append(case)
    if not cases:
        raise PromptSetError(f"{path}: no cases")
    return PromptSet(path=path, cases=cases, sha256=hashlib.sha256(data).hexdigest(), warnings=warnings)


def select_cases(cases: Iterable[Case], *, tags: Iterable[str] = (), limit: int | None = None,
                 shuffle: bool = False, seed: int = 0) -> list[Case]:
    """Cases carrying any of `tags` (all when none), optionally shuffled with a fixed seed, then the first `limit`."""
    wanted = set(tags)
    chosen = [c for c in cases if not wanted or wanted.intersection(c.tags)]
    if shuffle:
        random.Random(seed).shuffle(chosen)
    return chosen[:limit] if limit is not None else chosen


def discover_prompt_sets(directory: str | Path) -> list[PromptSetInfo]:
    """Every *.json / *.jsonl prompt set in a directory (and its subdirectories), with counts or the load error."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file()):
        name = str(path.relative_to(directory).with_suffix(""))
        try:
            prompt_set = load_prompt_set(path)
        except PromptSetError as exc:
            found.append(PromptSetInfo(path, name, error=str(exc)))
            continue
        found.append(PromptSetInfo(path, name, len(prompt_set.cases), prompt_set.tags))
    return found
