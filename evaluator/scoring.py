"""Tool-call scoring: find the calls in a response, check them against a case, aggregate pass rates.

Calls come from the server's native `tool_calls` when it parsed them, else from
the text, in whichever format the model wrote them (see `calls_from_text`).
Arguments are checked against the tool's JSON schema by a small validator
covering what tool schemas use (type, required, properties, enum, items,
bounds, lengths, additionalProperties, anyOf/oneOf/allOf).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from evaluator.prompts import Case, ContextIds, tool_schemas

# The formats models write tool calls in as text; a run's chat template names one of them.
TOOL_CALL_FORMATS = ("hermes", "mistral", "llama3_json", "chatml_plain", "json")
XML_CALL_RE = re.compile(r"<(tool_call|function_call|tool_calls)>\s*(.*?)\s*(?:</\1>|$)", re.DOTALL)
MISTRAL_MARK = "[TOOL_CALLS]"
MISTRAL_NAMED_RE = re.compile(r"\s*([A-Za-z_][\w.\-]*)\s*\[ARGS\]\s*")  # v11+: [TOOL_CALLS]name[ARGS]{...}
CHATML_PLAIN_RE = re.compile(r"tool_call:\s*([A-Za-z_][\w.\-]*)[ \t]*\r?\n?\s*arguments:\s*")
PYTHON_TAG = "<|python_tag|>"
# What is left of call markup once the calls are cut out: it is not prose the user reads.
LEFTOVER_MARKUP_RE = re.compile(
    r"<(tool_call|function_call|tool_calls)>.*?(?:</\1>|$)|</?(?:tool_call|function_call|tool_calls)>|\[TOOL_CALLS\]"
    r"|<\|python_tag\|>|<\|eom_id\|>|<\|eot_id\|>|<\|im_end\|>|```[A-Za-z]*\s*```", re.DOTALL)
PASS, FAIL, NOT_SCORED = "pass", "fail", "not scored"  # the verdicts of a check, a part and a case


@dataclass
class ToolCall:
    name: str
    arguments: Any  # a dict when well formed; whatever the model wrote otherwise
    source: str = "native"  # native | text
    span: tuple[int, int] | None = field(default=None, compare=False, repr=False)  # where in the text

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
class Response:
    """What the model returned, read once: its calls, the prose around them, and its type."""

    content: str
    calls: list[ToolCall]
    parse_errors: list[str]
    prose: str  # the text the user reads: content without any call markup

    @property
    def type(self) -> str:
        """text_only, tool_only, tool_text (calls with an explanation) or empty."""
        if self.calls:
            return "tool_text" if self.prose else "tool_only"
        return "text_only" if self.prose else "empty"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.calls]


@dataclass
class Score:
    calls: list[ToolCall]
    checks: list[Check]
    parse_errors: list[str] = field(default_factory=list)
    response: Response | None = None

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


def _call_from_object(obj: Any, source: str, span: tuple[int, int] | None = None) -> ToolCall | None:
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
    return ToolCall(name, _decode_arguments(args), source, span)


def _calls_from_json(value: Any, source: str, span: tuple[int, int] | None = None) -> list[ToolCall]:
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    return [call for call in (_call_from_object(item, source, span) for item in items) if call is not None]


def native_calls(tool_calls: Iterable[Any] | None) -> list[ToolCall]:
    """Calls as a server returned them (Ollama: arguments object; OpenAI: arguments JSON string)."""
    return _calls_from_json(list(tool_calls or []), "native")


_DECODER = json.JSONDecoder(strict=False)  # models put raw newlines inside JSON strings


def _hermes(text: str) -> tuple[list[ToolCall], list[str]]:
    """Hermes/Qwen: <tool_call>{json}</tool_call>, with or without newlines inside the tags."""
    calls: list[ToolCall] = []
    errors: list[str] = []
    for match in XML_CALL_RE.finditer(text):
        body = re.sub(r"^```(?:json)?\s*|\s*```$", "", match.group(2).strip())
        try:
            value, _ = _DECODER.raw_decode(body)
        except json.JSONDecodeError as exc:
            errors.append(f"<{match.group(1)}> holds no readable JSON ({exc.msg}): {body[:80]!r}")
            continue
        found = _calls_from_json(value, "text", match.span())
        if not found:
            errors.append(f"<{match.group(1)}> JSON has no name/arguments: {body[:80]!r}")
        calls.extend(found)
    return calls, errors


def _mistral(text: str) -> tuple[list[ToolCall], list[str]]:
    """Mistral: [TOOL_CALLS] [{"name": .., "arguments": ..}, ...], or [TOOL_CALLS]name[ARGS]{...}."""
    calls: list[ToolCall] = []
    errors: list[str] = []
    position = text.find(MISTRAL_MARK)
    while position != -1:
        start = position + len(MISTRAL_MARK)
        named = MISTRAL_NAMED_RE.match(text, start)
        body_at = named.end() if named else len(text) - len(text[start:].lstrip())
        try:
            value, end = _DECODER.raw_decode(text, body_at)
        except json.JSONDecodeError as exc:
            errors.append(f"{MISTRAL_MARK} is followed by no readable JSON ({exc.msg}): {text[start:start + 80]!r}")
            position = text.find(MISTRAL_MARK, start)
            continue
        if named:
            value = {"name": named.group(1), "arguments": value}
        found = _calls_from_json(value, "text", (position, end))
        if not found:
            errors.append(f"{MISTRAL_MARK} JSON has no name/arguments: {text[body_at:body_at + 80]!r}")
        calls.extend(found)
        position = text.find(MISTRAL_MARK, end)
    return calls, errors


def _chatml_plain(text: str) -> tuple[list[ToolCall], list[str]]:
    """The original Synaptic Tuner's ChatML: `tool_call: NAME` then `arguments: {...}`."""
    calls: list[ToolCall] = []
    errors: list[str] = []
    position = 0
    while (match := CHATML_PLAIN_RE.search(text, position)) is not None:
        try:
            value, end = _DECODER.raw_decode(text, match.end())
        except json.JSONDecodeError as exc:
            errors.append(f"tool_call: {match.group(1)} has no readable arguments JSON ({exc.msg})")
            position = match.end()
            continue
        calls.append(ToolCall(match.group(1), _decode_arguments(value), "text", (match.start(), end)))
        position = end
    return calls, errors


def _json_values(text: str, start: int = 0) -> tuple[list[ToolCall], list[str]]:
    """Every top-level JSON value that reads as a call: bare, in ```json fences, or several split by `;`."""
    calls: list[ToolCall] = []
    position = start
    while True:
        begin = min((i for i in (text.find("{", position), text.find("[", position)) if i != -1), default=-1)
        if begin == -1:
            return calls, []
        try:
            value, end = _DECODER.raw_decode(text, begin)
        except json.JSONDecodeError:
            position = begin + 1
            continue
        calls.extend(_calls_from_json(value, "text", (begin, end)))
        position = end


def _llama3_json(text: str) -> tuple[list[ToolCall], list[str]]:
    """Llama 3.x: {"name": .., "parameters": ..} objects, optionally after <|python_tag|>, several split by `;`."""
    tag = text.find(PYTHON_TAG)
    return _json_values(text, tag + len(PYTHON_TAG) if tag != -1 else 0)


_PARSERS = {"hermes": _hermes, "mistral": _mistral, "chatml_plain": _chatml_plain, "llama3_json": _llama3_json,
            "json": _json_values}
# Without a hint: the most specific markup first; bare JSON last, since every other format holds JSON too.
_AUTO_ORDER = ("hermes", "mistral", "chatml_plain", "llama3_json")


def calls_from_text(text: str, format: str | None = None) -> tuple[list[ToolCall], list[str]]:
    """Tool calls written in a response's text, and notes on any that could not be read.

    `format` names the one format to read (one of TOOL_CALL_FORMATS: what a run's chat template
    writes); None reads every format, taking the first that finds a call or a broken one.
    """
    if format is not None:
        if format not in _PARSERS:
            raise ValueError(f"unknown tool-call format {format!r} (choose {', '.join(TOOL_CALL_FORMATS)})")
        return _PARSERS[format](text)
    for name in _AUTO_ORDER:
        calls, errors = _PARSERS[name](text)
        if calls or errors:
            return calls, errors
    return [], []


def find_calls(content: str, tool_calls: Iterable[Any] | None,
               format: str | None = None) -> tuple[list[ToolCall], list[str]]:
    """Native calls when the server parsed any, else the ones written in the text."""
    native = native_calls(tool_calls)
    if native:
        return native, []
    return calls_from_text(content or "", format)


def prose_of(content: str, text_calls: list[ToolCall]) -> str:
    """The content without the calls written in it, or what is left of their markup."""
    pieces, position = [], 0
    for start, end in sorted(c.span for c in text_calls if c.span):
        if start >= position:
            pieces.append(content[position:start])
            position = end
    pieces.append(content[position:])
    return LEFTOVER_MARKUP_RE.sub("", "".join(pieces)).strip()


def read_response(content: str, tool_calls: Iterable[Any] | None = None, format: str | None = None) -> Response:
    """The calls (native, else from the text), the prose around them, and what could not be read."""
    content = content or ""
    text_calls, errors = calls_from_text(content, format)
    native = native_calls(tool_calls)
    calls = native or text_calls
    return Response(content, calls, [] if native else errors, prose_of(content, text_calls))


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


def _agent_ids_in(value: Any) -> list[str]:
    """Agent ids passed in arguments: strings shaped like the original's ids (agent_<...>)."""
    if isinstance(value, dict):
        return [i for k, v in value.items() if k != "context" for i in _agent_ids_in(v)]
    if isinstance(value, list):
        return [i for v in value for i in _agent_ids_in(v)]
    return [value] if isinstance(value, str) and value.startswith("agent_") else []


def _context_id_problems(call: ToolCall, ids: ContextIds) -> list[str]:
    arguments = call.arguments if isinstance(call.arguments, dict) else {}
    context = arguments.get("context")
    if not isinstance(context, dict):
        return [f"{call.name} has no context argument"] if ids.session_id or ids.allowed_workspaces else []
    problems = []
    if ids.session_id and context.get("sessionId") != ids.session_id:
        got = context.get("sessionId")
        problems.append(f"{call.name}: context.sessionId is {got!r}, expected {ids.session_id!r}" if got
                        else f"{call.name} lacks context.sessionId")
    allowed = ids.allowed_workspaces
    if allowed and context.get("workspaceId") not in allowed:
        got = context.get("workspaceId")
        problems.append(f"{call.name}: context.workspaceId {got!r} is not among {allowed}" if got
                        else f"{call.name} lacks context.workspaceId")
    if ids.agent_ids:
        problems += [f"{call.name}: agent id {agent!r} is not among the expected agents"
                     for agent in _agent_ids_in(arguments) if agent not in ids.agent_ids]
    return problems


def score_case(case: Case, content: str, tool_calls: Iterable[Any] | None = None, *,
               tools: list[dict[str, Any]] | None = None, format: str | None = None) -> Score:
    """Check one response against its case: expected tools, valid arguments, nothing extra, context ids.

    `tools` are the schemas arguments are checked against when the case lists none (--tools FILE);
    `format` is the tool-call format to read from the text (None: every format).
    """
    response = read_response(content, tool_calls, format)
    calls, parse_errors = response.calls, response.parse_errors
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
        # A set that lists its tools says which calls belong; the original's sets list none, and
        # there expected_tools is what it was: a subset every one of which must be called.
        if expected and case.tools:
            checks.append(Check("no_unexpected_calls", not unexpected,
                                "no unexpected calls" if not unexpected else f"unexpected calls: {unexpected}"))
    schemas = tool_schemas(case.tools or tools or [])
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
    if isinstance(case.expected_context, ContextIds):
        # As the original checked them: on the calls made; a case that expects no call has nothing to carry ids.
        if calls:
            lost = [p for call in calls for p in _context_id_problems(call, case.expected_context)]
            checks.append(Check("expected_context", not lost,
                                "every call carries the context ids" if not lost else "; ".join(lost)))
    elif case.expected_context and case.expected_tools != []:
        pairs = (list(case.expected_context.items()) if isinstance(case.expected_context, dict)
                 else [(None, v) for v in case.expected_context])
        if not calls:
            checks.append(Check("expected_context", False, "no tool call carried the context ids"))
        else:
            lost = [f"{call.name} lacks {k}={v!r}" if k else f"{call.name} lacks {v!r}"
                    for call in calls for k, v in pairs if not _carries(call.arguments, k, v)]
            checks.append(Check("expected_context", not lost,
                                "every call carries the context ids" if not lost else "; ".join(lost)))
    return Score(calls, checks, parse_errors, response)


# --- aggregation -----------------------------------------------------------------


def _rate(passed: int, total: int) -> float | None:
    return round(passed / total, 4) if total else None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 4)


def verdict_of(record: dict[str, Any]) -> str:
    """A record's overall verdict (records written before behaviour scoring carry only `passed`)."""
    return record.get("verdict") or (PASS if record.get("passed") and not record.get("error") else FAIL)


def tool_verdict_of(record: dict[str, Any]) -> str | None:
    if "tool_verdict" in record:
        return record["tool_verdict"]
    asked = record.get("checks") or record.get("error") or record.get("expected_tools") is not None
    return verdict_of(record) if asked else None


def _part(records: list[dict[str, Any]], verdict: Any) -> dict[str, Any]:
    counts = Counter(verdict(r) for r in records)
    cases = counts[PASS] + counts[FAIL] + counts[NOT_SCORED]
    return {"cases": cases, "passed": counts[PASS], "failed": counts[FAIL], "not_scored": counts[NOT_SCORED],
            "pass_rate": _rate(counts[PASS], counts[PASS] + counts[FAIL])}


def _shape(text: str) -> str:
    """A reason with its particulars (names, ids, numbers) blanked, so alike failures count together."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "…", text)
    text = re.sub(r"\[[^\]]*\]", "[…]", text)
    return re.sub(r"\d+", "N", text)


def _failure_reasons(results: list[dict[str, Any]], top: int = 10) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter()
    examples: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.get("error"):
            keys = [(f"error: {r['error'].get('kind')}", r["error"].get("message") or "")]
        else:
            keys = [(f"{c['name']}: {_shape(c.get('detail', ''))}", c.get("detail", ""))
                    for c in r.get("checks") or [] if not c.get("passed")]
            keys += [(c["name"] + ("" if c["kind"] == "response_type" else f" ({c['kind'].replace('_', '-')})")
                      + " failed" + (" by the judge" if c.get("by") == "judge" else ""), c.get("reason", ""))
                     for c in r.get("behavior") or [] if c.get("verdict") == FAIL]
        for key, example in keys:
            counts[key] += 1
            entry = examples.setdefault(key, {"example": example, "cases": []})
            if str(r["id"]) not in entry["cases"] and len(entry["cases"]) < 5:
                entry["cases"].append(str(r["id"]))
    return [{"reason": key, "count": n, **examples[key]} for key, n in counts.most_common(top)]


def _spread(rates: list[float | None]) -> dict[str, Any]:
    values = [r for r in rates if r is not None]
    return {"per_try": rates, "mean": round(statistics.fmean(values), 4) if values else None,
            "stdev": round(statistics.pstdev(values), 4) if values else None,
            "min": min(values) if values else None, "max": max(values) if values else None}


def _repeats(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    tries = sorted({r.get("try", 1) for r in results})
    if len(tries) < 2:
        return None
    by_try = {t: [r for r in results if r.get("try", 1) == t] for t in tries}
    combined = combine_tries(results)
    every = [c for c in combined.values() if len(c["tries"]) == len(tries)]
    all_passed = sum(1 for c in every if c["verdict"] == PASS)
    return {
        "tries": len(tries), "cases": len(combined),
        "pass_rate": _spread([_part(rs, verdict_of)["pass_rate"] for rs in by_try.values()]),
        "tool_calls": _spread([_part(rs, tool_verdict_of)["pass_rate"] for rs in by_try.values()]),
        "behavior": _spread([_part(rs, lambda r: r.get("behavior_verdict"))["pass_rate"] for rs in by_try.values()]),
        # pass^N: the share of cases every one of whose tries passed.
        "pass_all": _rate(all_passed, len(every)), "pass_all_cases": all_passed,
    }


def combine_tries(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One entry per case over its tries: it passes only if every try passed; a check likewise."""
    cases: dict[str, dict[str, Any]] = {}
    for r in results:
        case = cases.setdefault(str(r["id"]), {"tries": [], "records": []})
        case["tries"].append(r.get("try", 1))
        case["records"].append(r)
    for case in cases.values():
        verdicts = [verdict_of(r) for r in case["records"]]
        case["verdict"] = FAIL if FAIL in verdicts else NOT_SCORED if NOT_SCORED in verdicts else PASS
        case["reasons"] = [reason for r in case["records"] for reason in r.get("reasons") or []]
        checks: dict[str, list[str]] = {}
        reasons: dict[str, str] = {}
        for r in case["records"]:
            for c in r.get("behavior") or []:
                checks.setdefault(c["name"], []).append(c.get("verdict"))
                if c.get("verdict") == FAIL:
                    reasons.setdefault(c["name"], c.get("reason", ""))
        case["behavior"] = {name: FAIL if FAIL in vs else NOT_SCORED if NOT_SCORED in vs else PASS
                            for name, vs in checks.items()}
        case["behavior_reasons"] = reasons
        case["tool_verdict"] = _worst([tool_verdict_of(r) for r in case["records"]])
        case["behavior_verdict"] = _worst([r.get("behavior_verdict") for r in case["records"]])
    return cases


def _worst(verdicts: list[str | None]) -> str | None:
    present = [v for v in verdicts if v is not None]
    if not present:
        return None
    return FAIL if FAIL in present else NOT_SCORED if NOT_SCORED in present else PASS


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Pass rates overall, for tool calls and for behaviour; per tag, expected tool and expectation;
    failure reasons, judge agreement, repeats; latency and token totals. From result records."""
    total = len(results)
    verdicts = Counter(verdict_of(r) for r in results)
    errors = sum(1 for r in results if r.get("error"))
    per_tag: dict[str, list[dict[str, Any]]] = {}
    per_tool: dict[str, dict[str, Any]] = {}
    per_check: dict[str, dict[str, Any]] = {}
    judge = {"judged": 0, "decided": 0, "cached": 0, "failed": 0, "compared": 0, "agreed": 0}
    checks = Counter()
    not_scored_why: Counter[str] = Counter()
    for r in results:
        for tag in r.get("tags") or ["(untagged)"]:
            per_tag.setdefault(tag, []).append(r)
        called = Counter(c["name"] for c in r.get("calls") or [])
        expected = r.get("expected_tools") or []
        for tool in set(expected):
            row = per_tool.setdefault(tool, {"cases": 0, "called": 0, "passed": 0, "unexpected": 0})
            row["cases"] += 1
            row["called"] += called[tool] > 0
            row["passed"] += tool_verdict_of(r) == PASS
        if r.get("expected_tools") is not None:
            for tool in called:
                if tool not in expected:
                    per_tool.setdefault(tool, {"cases": 0, "called": 0, "passed": 0, "unexpected": 0})
                    per_tool[tool]["unexpected"] += called[tool]
        for c in r.get("behavior") or []:
            row = per_check.setdefault(c["name"], {"kind": c["kind"], "total": 0, "pass": 0, "fail": 0,
                                                   "not_scored": 0, "by_judge": 0, "by_rule": 0})
            row["total"] += 1
            row[{PASS: "pass", FAIL: "fail"}.get(c["verdict"], "not_scored")] += 1
            row["by_judge"] += c.get("by") == "judge"
            row["by_rule"] += c.get("by") == "rule"
            checks[c["verdict"]] += 1
            if c["verdict"] == NOT_SCORED:
                not_scored_why[c.get("not_scored") or "not scored"] += 1
            answered = (c.get("judge") or {}).get("verdict") is not None
            if answered:
                judge["judged"] += 1
                judge["cached"] += bool(c["judge"].get("cached"))
                if c.get("rule"):  # both ran: does the judge read what the rule saw?
                    judge["compared"] += 1
                    judge["agreed"] += c["judge"]["verdict"] == c["rule"]["verdict"]
            judge["decided"] += c.get("by") == "judge"
            judge["failed"] += bool(c.get("judge")) and not answered
    for row in per_tool.values():
        row["pass_rate"] = _rate(row["passed"], row["cases"])
    for row in per_check.values():
        row["pass_rate"] = _rate(row["pass"], row["pass"] + row["fail"])
    tags = {}
    for tag, records in sorted(per_tag.items()):
        overall = _part(records, verdict_of)
        tags[tag] = {"total": len(records), "passed": overall["passed"],
                     "errors": sum(1 for r in records if r.get("error")), "not_scored": overall["not_scored"],
                     "pass_rate": overall["pass_rate"],
                     "tool_pass_rate": _part(records, tool_verdict_of)["pass_rate"],
                     "behavior_pass_rate": _part(records, lambda r: r.get("behavior_verdict"))["pass_rate"]}
    behaviour = _part(results, lambda r: r.get("behavior_verdict"))
    behaviour.update(checks={"total": sum(checks.values()), "pass": checks[PASS], "fail": checks[FAIL],
                             "not_scored": checks[NOT_SCORED]}, not_scored_why=dict(not_scored_why))
    judge["agreement"] = _rate(judge["agreed"], judge["compared"])
    latencies = [r["latency_s"] for r in results if isinstance(r.get("latency_s"), (int, float)) and not r.get("error")]
    completion = [r.get("completion_tokens") for r in results if isinstance(r.get("completion_tokens"), int)]
    prompt = [r.get("prompt_tokens") for r in results if isinstance(r.get("prompt_tokens"), int)]
    return {
        "total": total,
        "passed": verdicts[PASS],
        "failed": verdicts[FAIL] - errors,
        "errors": errors,
        "not_scored": verdicts[NOT_SCORED],
        "pass_rate": _rate(verdicts[PASS], verdicts[PASS] + verdicts[FAIL]),
        "tool_calls": _part(results, tool_verdict_of),
        "behavior": behaviour,
        "per_tag": tags,
        "per_tool": dict(sorted(per_tool.items())),
        "per_expectation": dict(sorted(per_check.items())),
        "failure_reasons": _failure_reasons(results),
        "judge": judge,
        "repeats": _repeats(results),
        "latency_s": {"mean": round(sum(latencies) / len(latencies), 4) if latencies else None,
                      "p50": _percentile(latencies, 0.5), "p95": _percentile(latencies, 0.95)},
        "tokens": {"prompt": sum(prompt), "completion": sum(completion)},
    }
