"""Tool-call scoring: find the calls in a response, check them against a case, aggregate pass rates.

Calls come from the server's native `tool_calls` when it parsed them, else from
the text: `<tool_call>{...}</tool_call>` (ChatML/Hermes, the demo model's
template), fenced or bare JSON objects `{"name": .., "arguments": ..}` and lists
of them. Arguments are checked against the tool's JSON schema by a small
validator covering what tool schemas use (type, required, properties, enum,
items, bounds, lengths, additionalProperties, anyOf/oneOf/allOf).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from evaluator.prompts import Case

XML_CALL_RE = re.compile(r"<(tool_call|function_call|tool_calls)>\s*(.*?)\s*(?:</\1>|$)", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: Any  # a dict when well formed; whatever the model wrote otherwise
    source: str = "native"  # native | text

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments, "source": self.source}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass
class Score:
    calls: list[ToolCall]
    checks: list[Check]
    parse_errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [c.detail for c in self.checks if not c.passed]


# --- finding calls ---------------------------------------------------------


def _decode_arguments(value: Any) -> Any:
    # OpenAI sends arguments as a JSON string; Ollama and most text formats as an object.
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            return value
    return {} if value is None else value


def _call_from_object(obj: Any, source: str) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # {"type": "function", "function": {"name", "arguments"}}
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    if "arguments" in obj:
        args = obj["arguments"]
    elif "parameters" in obj:  # Llama 3.x writes "parameters"
        args = obj["parameters"]
    else:
        return None
    return ToolCall(name, _decode_arguments(args), source)


def _calls_from_json(value: Any, source: str) -> list[ToolCall]:
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    return [call for call in (_call_from_object(item, source) for item in items) if call is not None]


def native_calls(tool_calls: Iterable[Any] | None) -> list[ToolCall]:
    """Calls as a server returned them (Ollama: arguments object; OpenAI: arguments JSON string)."""
    return _calls_from_json(list(tool_calls or []), "native")


def calls_from_text(text: str) -> tuple[list[ToolCall], list[str]]:
    """Tool calls written in a response's text, and notes on any that could not be read."""
    calls: list[ToolCall] = []
    errors: list[str] = []
    decoder = json.JSONDecoder()
    tagged = list(XML_CALL_RE.finditer(text))
    for match in tagged:
        body = match.group(2).strip()
        body = re.sub(r"^```(?:json)?\s*|\s*```$", "", body)
        try:
            value, _ = decoder.raw_decode(body)
        except json.JSONDecodeError as exc:
            errors.append(f"<{match.group(1)}> holds no readable JSON ({exc.msg}): {body[:80]!r}")
            continue
        found = _calls_from_json(value, "text")
        if not found:
            errors.append(f"<{match.group(1)}> JSON has no name/arguments: {body[:80]!r}")
        calls.extend(found)
    if tagged:
        return calls, errors
    # No tags: take every top-level JSON value that looks like a call (bare or in ```json fences).
    position = 0
    while True:
        start = min((i for i in (text.find("{", position), text.find("[", position)) if i != -1), default=-1)
        if start == -1:
            break
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        calls.extend(_calls_from_json(value, "text"))
        position = end
    return calls, errors


def find_calls(content: str, tool_calls: Iterable[Any] | None) -> tuple[list[ToolCall], list[str]]:
    """Native calls when the server parsed any, else the ones written in the text."""
    native = native_calls(tool_calls)
    if native:
        return native, []
    return calls_from_text(content or "")


# --- JSON schema -----------------------------------------------------------

_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def _type_name(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "object", "array", "null"):
        if _TYPES[name](value) and not (name == "integer" and isinstance(value, float)):
            return name
    return type(value).__name__


def validate(value: Any, schema: Any, path: str = "") -> list[str]:
    """Errors of `value` against a JSON schema, each as 'path: what is wrong'."""
    if not isinstance(schema, dict):
        return []
    where = path or "arguments"
    expected = schema.get("type")
    if expected is not None:
        types = expected if isinstance(expected, list) else [expected]
        known = [t for t in types if t in _TYPES]
        if known and not any(_TYPES[t](value) for t in known):
            return [f"{where}: expected {' or '.join(known)}, got {_type_name(value)}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: must be {schema['const']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, ok, words in (("minimum", lambda b: value >= b, ">="), ("maximum", lambda b: value <= b, "<="),
                               ("exclusiveMinimum", lambda b: value > b, ">"),
                               ("exclusiveMaximum", lambda b: value < b, "<")):
            bound = schema.get(key)
            if isinstance(bound, (int, float)) and not isinstance(bound, bool) and not ok(bound):
                errors.append(f"{where}: {value} is not {words} {bound}")
    if isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']} characters")
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']} characters")
        if isinstance(schema.get("pattern"), str):
            try:
                if not re.search(schema["pattern"], value):
                    errors.append(f"{where}: does not match {schema['pattern']!r}")
            except re.error:
                pass  # a pattern Python cannot compile is the prompt set's problem, not the model's
    if isinstance(value, dict):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for key in schema.get("required") or []:
            if key not in value:
                errors.append(f"{where}: missing required {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if key in properties:
                errors.extend(validate(item, properties[key], child))
            elif extra is False:
                errors.append(f"{child}: not an allowed property")
            elif isinstance(extra, dict):
                errors.extend(validate(item, extra, child))
    if isinstance(value, list):
        if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                errors.extend(validate(item, schema["items"], f"{where}[{i}]"))
    for sub in schema.get("allOf") or []:
        errors.extend(validate(value, sub, path))
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            matching = sum(1 for sub in options if not validate(value, sub, path))
            if matching == 0 or (key == "oneOf" and matching > 1):
                errors.append(f"{where}: matches {matching} of the {key} alternatives")
    return errors


# --- scoring one case ---------------------------------------------------------


def _carries(arguments: Any, key: str | None, value: Any) -> bool:
    """Whether `value` appears in the arguments, under `key` when one is given (at any depth)."""
    if isinstance(arguments, dict):
        if key is not None and key in arguments and str(arguments[key]) == str(value):
            return True
        return any(_carries(v, key, value) for v in arguments.values())
    if isinstance(arguments, list):
        return any(_carries(v, key, value) for v in arguments)
    return key is None and arguments is not None and str(arguments) == str(value)


def score_case(case: Case, content: str, tool_calls: Iterable[Any] | None = None) -> Score:
    """Check one response against its case: expected tools, valid arguments, nothing extra, context ids."""
    calls, parse_errors = find_calls(content, tool_calls)
    checks: list[Check] = []
    names = [c.name for c in calls]
    if parse_errors:
        checks.append(Check("readable_calls", False, "; ".join(parse_errors)))
    if case.expected_tools is not None:
        expected = case.expected_tools
        if not expected:
            checks.append(Check("expected_tools", not calls,
                                "no tool call expected" if not calls else f"expected no tool call, called {names}"))
        elif case.ordered:
            in_order = [n for n in names if n in expected]
            checks.append(Check("expected_tools", in_order == expected,
                                f"called {in_order} in order" if in_order == expected
                                else f"expected {expected} in this order, called {names or 'nothing'}"))
        else:
            missing = Counter(expected) - Counter(names)
            checks.append(Check("expected_tools", not missing,
                                f"called {sorted(set(expected))}" if not missing
                                else f"did not call {sorted(missing.elements())} (called {names or 'nothing'})"))
        unexpected = [n for n in names if n not in expected]
        if expected:
            checks.append(Check("no_unexpected_calls", not unexpected,
                                "no unexpected calls" if not unexpected else f"unexpected calls: {unexpected}"))
    schemas = case.tool_schemas()
    if calls and schemas:
        problems = []
        for call in calls:
            if call.name not in schemas:
                problems.append(f"{call.name}: not an offered tool")
            elif not isinstance(call.arguments, dict):
                problems.append(f"{call.name}: arguments are not a JSON object: {str(call.arguments)[:60]!r}")
            else:
                problems.extend(f"{call.name}: {e}" for e in validate(call.arguments, schemas[call.name]))
        checks.append(Check("arguments_valid", not problems,
                            "arguments match the schemas" if not problems else "; ".join(problems)))
    if case.expected_context and case.expected_tools != []:
        pairs = (list(case.expected_context.items()) if isinstance(case.expected_context, dict)
                 else [(None, v) for v in case.expected_context])
        if not calls:
            checks.append(Check("expected_context", False, "no tool call carried the context ids"))
        else:
            lost = [f"{call.name} lacks {k}={v!r}" if k else f"{call.name} lacks {v!r}"
                    for call in calls for k, v in pairs if not _carries(call.arguments, k, v)]
            checks.append(Check("expected_context", not lost,
                                "every call carries the context ids" if not lost else "; ".join(lost)))
    return Score(calls, checks, parse_errors)


# --- aggregation -----------------------------------------------------------------


def _rate(passed: int, total: int) -> float | None:
    return round(passed / total, 4) if total else None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 4)


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Pass rates overall, per tag and per expected tool, latency and token totals, from result records."""
    total = len(results)
    passed = sum(1 for r in results if r.get("passed"))
    errors = sum(1 for r in results if r.get("error"))
    per_tag: dict[str, dict[str, Any]] = {}
    per_tool: dict[str, dict[str, Any]] = {}
    for r in results:
        for tag in r.get("tags") or ["(untagged)"]:
            row = per_tag.setdefault(tag, {"total": 0, "passed": 0, "errors": 0})
            row["total"] += 1
            row["passed"] += bool(r.get("passed"))
            row["errors"] += bool(r.get("error"))
        called = Counter(c["name"] for c in r.get("calls") or [])
        expected = r.get("expected_tools") or []
        for tool in set(expected):
            row = per_tool.setdefault(tool, {"cases": 0, "called": 0, "passed": 0, "unexpected": 0})
            row["cases"] += 1
            row["called"] += called[tool] > 0
            row["passed"] += bool(r.get("passed"))
        if r.get("expected_tools") is not None:
            for tool in called:
                if tool not in expected:
                    per_tool.setdefault(tool, {"cases": 0, "called": 0, "passed": 0, "unexpected": 0})
                    per_tool[tool]["unexpected"] += called[tool]
    for row in per_tag.values():
        row["pass_rate"] = _rate(row["passed"], row["total"])
    for row in per_tool.values():
        row["pass_rate"] = _rate(row["passed"], row["cases"])
    latencies = [r["latency_s"] for r in results if isinstance(r.get("latency_s"), (int, float)) and not r.get("error")]
    completion = [r.get("completion_tokens") for r in results if isinstance(r.get("completion_tokens"), int)]
    prompt = [r.get("prompt_tokens") for r in results if isinstance(r.get("prompt_tokens"), int)]
    return {
        "total": total,
        "passed": passed,
        "failed": total - passed - errors,
        "errors": errors,
        "pass_rate": _rate(passed, total),
        "per_tag": dict(sorted(per_tag.items())),
        "per_tool": dict(sorted(per_tool.items())),
        "latency_s": {"mean": round(sum(latencies) / len(latencies), 4) if latencies else None,
                      "p50": _percentile(latencies, 0.5), "p95": _percentile(latencies, 0.95)},
        "tokens": {"prompt": sum(prompt), "completion": sum(completion)},
    }
