"""Prompt sets: load and check the original Synaptic Tuner format (JSON list, {"cases": [...]}, or JSONL).

Both of the original's sets load as they are: its `expected_context` object of ids
(session_id, workspace_id, workspace_ids, agent_ids) and its behaviour fields
(expected_response_type, behavior_expectations, anti_patterns_to_avoid, notes).
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

CASE_FIELDS = ("id", "question", "system", "tags", "expected_tools", "expected_context", "tools", "ordered",
               "expected_response_type", "behavior_expectations", "anti_patterns_to_avoid", "notes")
SET_FIELDS = ("cases", "tools", "name", "description")
RESPONSE_TYPES = ("text_only", "tool_only", "tool_text")
# The original's expected_context: snake_case names for the camelCase keys of a call's `context` argument.
ORIGINAL_CONTEXT_KEYS = ("session_id", "workspace_id", "workspace_ids", "agent_ids")


class PromptSetError(ValueError):
    """A prompt set that cannot be used; the message says where and why."""


def tool_schemas(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Tools by name -> their parameters schema."""
    return {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}


@dataclass
class ContextIds:
    """The original's expected_context: calls carry context.sessionId == session_id and a
    context.workspaceId among the workspace ids; agent ids they pass are among agent_ids."""

    session_id: str | None = None
    workspace_id: str | None = None
    workspace_ids: list[str] = field(default_factory=list)
    agent_ids: list[str] = field(default_factory=list)

    @property
    def allowed_workspaces(self) -> list[str]:
        ids = ([self.workspace_id] if self.workspace_id else []) + self.workspace_ids
        return list(dict.fromkeys(ids))

    def to_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "workspace_id": self.workspace_id,
                "workspace_ids": self.workspace_ids, "agent_ids": self.agent_ids}


@dataclass
class Case:
    id: str
    question: str
    system: str | None = None
    tags: list[str] = field(default_factory=list)
    # None: the case does not score tool use at all; []: the model must not call a tool.
    expected_tools: list[str] | None = None
    # {"sessionId": "sess_1"} (each key must carry that value), ["sess_1"] (each value must appear),
    # or the original's object of ids (ContextIds).
    expected_context: dict[str, Any] | list[str] | ContextIds | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    ordered: bool = False
    expected_response_type: str | None = None
    # name -> true/false (the behaviour must / must not show) or a number (sessionMemory_min_chars: 100).
    behavior_expectations: dict[str, bool | int | float] = field(default_factory=dict)
    behavior_note: str | None = None  # behavior_expectations.reason: free text, not a check
    anti_patterns: list[str] = field(default_factory=list)  # the anti_patterns_to_avoid set true
    notes: str | None = None

    def context_for_record(self) -> Any:
        """expected_context as JSON, in the shape the prompt set wrote it."""
        return self.expected_context.to_dict() if isinstance(self.expected_context, ContextIds) \
            else self.expected_context

    def messages(self) -> list[dict[str, Any]]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": self.question}]

    def tool_schemas(self) -> dict[str, dict[str, Any]]:
        """Offered tools by name -> their parameters schema."""
        return tool_schemas(self.tools)


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


def _case_label(index: int, case_id: Any = None) -> str:
    ident = f" (id {case_id!r})" if isinstance(case_id, (str, int)) and not isinstance(case_id, bool) else ""
    return f"case {index + 1}{ident}"


def _where(path: Path, index: int, line: int | None, case_id: Any = None) -> str:
    place = f"{path}:{line}" if line else str(path)
    return f"{place}: {_case_label(index, case_id)}"


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


def _expected_context(context: Any, where: str) -> dict[str, Any] | list[str] | ContextIds | None:
    if context is None:
        return None
    if isinstance(context, dict) and set(context) & set(ORIGINAL_CONTEXT_KEYS):
        others = [k for k in context if k not in ORIGINAL_CONTEXT_KEYS]
        if others:
            raise PromptSetError(f"{where}: expected_context.{others[0]}: the original's expected_context holds only "
                                 f"{', '.join(ORIGINAL_CONTEXT_KEYS)}")
        ids = ContextIds()
        for key in ("session_id", "workspace_id"):
            value = context.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                raise PromptSetError(f"{where}: expected_context.{key}: must be a non-empty string")
            setattr(ids, key, value)
        for key in ("workspace_ids", "agent_ids"):
            if context.get(key) is not None:
                setattr(ids, key, _string_list(context[key], where, f"expected_context.{key}"))
        return ids
    if isinstance(context, dict):
        bad = [k for k, v in context.items() if not isinstance(v, (str, int, float)) or isinstance(v, bool)]
        if bad:
            raise PromptSetError(f"{where}: expected_context.{bad[0]}: must be a string or number")
        return context
    return _string_list(context, where, "expected_context")


def _behaviour_fields(raw: dict[str, Any], where: str) -> dict[str, Any]:
    from evaluator.behavior import value_problem

    fields: dict[str, Any] = {"expected_response_type": raw.get("expected_response_type")}
    if fields["expected_response_type"] is not None and fields["expected_response_type"] not in RESPONSE_TYPES:
        raise PromptSetError(f"{where}: expected_response_type: must be one of {', '.join(RESPONSE_TYPES)}, "
                             f"got {fields['expected_response_type']!r}")
    expectations = raw.get("behavior_expectations", {})
    if not isinstance(expectations, dict):
        raise PromptSetError(f"{where}: behavior_expectations: must be an object of named expectations")
    note = expectations.get("reason")
    if note is not None and not isinstance(note, str):
        raise PromptSetError(f"{where}: behavior_expectations.reason: must be a string (a note, not a check)")
    checks = {}
    for name, value in expectations.items():
        if name == "reason":
            continue
        if not isinstance(value, (bool, int, float)):
            raise PromptSetError(f"{where}: behavior_expectations.{name}: must be true, false or a number, "
                                 f"got {json.dumps(value)}")
        problem = value_problem(name, value)
        if problem:
            raise PromptSetError(f"{where}: behavior_expectations.{name}: {problem}")
        checks[name] = value
    anti = raw.get("anti_patterns_to_avoid", {})
    if not isinstance(anti, dict):
        raise PromptSetError(f"{where}: anti_patterns_to_avoid: must be an object of named anti-patterns")
    for name, value in anti.items():
        if not isinstance(value, bool):
            raise PromptSetError(f"{where}: anti_patterns_to_avoid.{name}: must be true or false, "
                                 f"got {json.dumps(value)}")
    notes = raw.get("notes")
    if notes is not None and not isinstance(notes, str):
        raise PromptSetError(f"{where}: notes: must be a string")
    fields.update(behavior_expectations=checks, behavior_note=note,
                  anti_patterns=[name for name, on in anti.items() if on], notes=notes)
    return fields


def _parse_case(raw: Any, index: int, line: int | None, path: Path, shared_tools: list[dict[str, Any]],
                unknown: dict[str, list[str]]) -> Case:
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
    context = _expected_context(raw.get("expected_context"), where)
    behaviour = _behaviour_fields(raw, where)
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
            unknown.setdefault(key, []).append(_case_label(index, case_id))
    return Case(id=str(case_id), question=question, system=system, tags=tags, expected_tools=expected_tools,
                expected_context=context, tools=tools, ordered=ordered, **behaviour)


def _set_warnings(path: Path, cases: list[Case], unknown: dict[str, list[str]]) -> list[str]:
    """One warning per unknown field and per expectation nothing scores, for the whole set."""
    from evaluator.behavior import understood

    warnings = []
    for key, places in unknown.items():
        close = difflib.get_close_matches(key, CASE_FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if len(places) == 1:
            warnings.append(f"{path}: {places[0]}: unknown field {key!r} ignored{hint}")
        else:
            warnings.append(f"{path}: unknown field {key!r} ignored in {len(places)} cases "
                            f"(first: {places[0]}){hint}")
    unscored: dict[str, int] = {}
    for case in cases:
        for name in [*case.behavior_expectations, *case.anti_patterns]:
            if not understood(name):
                unscored[name] = unscored.get(name, 0) + 1
    for name, count in unscored.items():
        warnings.append(f"{path}: {name!r} has no rule or judge rubric: reported as not scored "
                        f"({count} case{'s' if count > 1 else ''})")
    return warnings


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
    unknown: dict[str, list[str]] = {}
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for index, (raw, line) in enumerate(rows):
        case = _parse_case(raw, index, line, path, shared_tools, unknown)
        if case.id in seen:
            raise PromptSetError(f"{_where(path, index, line, case.id)}: id: duplicate of case {seen[case.id] + 1}")
        seen[case.id] = index
        cases.append(case)
    if not cases:
        raise PromptSetError(f"{path}: no cases")
    return PromptSet(path=path, cases=cases, sha256=hashlib.sha256(data).hexdigest(),
                     warnings=_set_warnings(path, cases, unknown))


def load_tools_file(path: str | Path) -> tuple[list[dict[str, Any]], str]:
    """An OpenAI function list (a JSON list, or {"tools": [...]}) and its sha256, for --tools FILE."""
    path = Path(path)
    try:
        data = path.read_bytes()
        document = json.loads(data.decode("utf-8"))
    except OSError as exc:
        raise PromptSetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PromptSetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise PromptSetError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if isinstance(document, dict) and "tools" in document:
        document = document["tools"]
    tools = _normalise_tools(document, str(path))
    if not tools:
        raise PromptSetError(f"{path}: tools: the list is empty")
    return tools, hashlib.sha256(data).hexdigest()


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
