"""Training data: read JSONL rows, check them, and normalise them to the shape TRL expects.

Pure Python (no datasets, no torch): the app's pre-flight imports it to check a
file before anything is launched, and the trainers use the same code, so the
checks and the training can never disagree.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROLES = {"system", "user", "assistant", "tool"}
# ShareGPT speakers and the OpenAI role each one becomes.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
    "ipython": "tool",
}
MAX_REPORTED = 10
# One JSONL row may be this big; a bigger one is refused with its line, never read into memory whole.
MAX_ROW_BYTES = 64 << 20


@dataclass
class DataProblem:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


class DatasetError(Exception):
    """The data cannot be trained on. `problems` holds the first few, each naming file:line."""

    def __init__(self, problems: list[DataProblem], total: int | None = None) -> None:
        self.problems = problems
        self.total = total if total is not None else len(problems)
        lines = [str(p) for p in problems[:MAX_REPORTED]]
        if self.total > len(lines):
            lines.append(f"... and {self.total - len(lines)} more problems")
        super().__init__("\n".join(lines))


@dataclass
class DatasetReport:
    path: str
    method: str
    rows: int = 0
    format: str = ""
    desirable: int = 0  # KTO label true
    undesirable: int = 0  # KTO label false
    with_tools: int = 0
    tool_calls: int = 0
    warnings: list[str] = field(default_factory=list)
    # The file line each returned row came from, so later checks (the chat template probe) can name it.
    lines: list[int] = field(default_factory=list)


class RowError(ValueError):
    pass


def open_dataset(path: Path):
    """The dataset file opened for reading, or DatasetError saying why it cannot be: missing, a symlink
    loop, a directory, or not a regular file (a FIFO would block pre-flight for ever)."""
    shown = str(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "is a symlink loop (the link points, in the end, back at itself)"
        elif exc.errno == errno.ENOENT:
            reason = "file not found" + (" (a symlink to something that does not exist)" if os.path.islink(path)
                                         else "")
        else:
            reason = f"cannot be read ({exc.strerror})"
        raise DatasetError([DataProblem(shown, None, reason)]) from None
    if stat.S_ISDIR(info.st_mode):
        raise DatasetError([DataProblem(shown, None, "is a directory, not a JSONL file")])
    if not stat.S_ISREG(info.st_mode):
        raise DatasetError([DataProblem(shown, None, "is not a regular file (a FIFO, socket or device); "
                                                     "give a JSONL file")])
    try:
        return open(path, "rb")
    except OSError as exc:
        raise DatasetError([DataProblem(shown, None, f"cannot be read ({exc.strerror})")]) from None


def iter_jsonl(path: Path, max_row_bytes: int = MAX_ROW_BYTES) -> Iterator[tuple[int, str | RowError]]:
    """(line number, text) for each non-blank line, read one line at a time; a line over `max_row_bytes`
    or not UTF-8 comes as (line number, RowError) and reading goes on with the next line."""
    with open_dataset(Path(path)) as handle:
        number = 0
        while True:
            raw = handle.readline(max_row_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_row_bytes and not raw.endswith(b"\n"):
                del raw
                while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the oversized line without holding it
                yield number, RowError(f"row is larger than the {max_row_bytes >> 20} MB limit for one row")
                continue
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield number, RowError(f"not UTF-8 text (byte {exc.start + 1} of the line: {exc.reason})")
                continue
            del raw
            if text.strip():
                yield number, text


def _parse_arguments(arguments: Any, where: str) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise RowError(f"{where}: arguments are not valid JSON ({exc.msg})") from None
        if isinstance(value, dict):
            return value
    raise RowError(f"{where}: arguments must be a JSON object")


def normalise_tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI tool calls with arguments as a dict, which is what chat templates render."""
    if not isinstance(calls, list):
        raise RowError(f"{where}.tool_calls must be a list")
    out = []
    for i, call in enumerate(calls):
        spot = f"{where}.tool_calls[{i}]"
        if not isinstance(call, dict):
            raise RowError(f"{spot} must be an object")
        function = call.get("function", call)
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise RowError(f"{spot} has no function name")
        arguments = _parse_arguments(function.get("arguments", {}), spot)
        normalised = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if call.get("id"):
            normalised["id"] = str(call["id"])
        out.append(normalised)
    return out


def normalise_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI-style messages from OpenAI or ShareGPT rows, checked turn by turn."""
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{where}' must be a non-empty list of messages")
    out = []
    for i, message in enumerate(messages):
        spot = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise RowError(f"{spot} must be an object")
        if "role" in message:
            role = message["role"]
            content = message.get("content")
        elif "from" in message:
            role = SHAREGPT_ROLES.get(str(message["from"]).lower())
            if role is None:
                raise RowError(f"{spot}: unknown speaker {message['from']!r} (expected one of: {', '.join(sorted(SHAREGPT_ROLES))})")
            content = message.get("value")
        else:
            raise RowError(f"{spot} needs 'role' and 'content' (or ShareGPT 'from' and 'value')")
        if role not in ROLES:
            raise RowError(f"{spot}: unknown role {role!r} (expected system, user, assistant or tool)")
        normalised: dict[str, Any] = {"role": role}
        if message.get("tool_calls"):
            if role != "assistant":
                raise RowError(f"{spot}: only assistant turns can have tool_calls")
            normalised["tool_calls"] = normalise_tool_calls(message["tool_calls"], spot)
        if content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise RowError(f"{spot}.content must be text")
        if not content and "tool_calls" not in normalised and role != "assistant":
            raise RowError(f"{spot}.content is empty")
        normalised["content"] = content
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if message.get(key):
                    normalised[key] = str(message[key])
        out.append(normalised)
    return out


def _has_answer(message: dict[str, Any]) -> bool:
    return bool(message.get("content") or message.get("tool_calls"))


def _check_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise RowError("'tools' must be a list of function schemas")
    for i, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise RowError(f"tools[{i}] has no function name")
        parameters = function.get("parameters")
        if parameters is None:
            continue
        if not isinstance(parameters, dict):
            raise RowError(f"tools[{i}].parameters must be a JSON schema object")
        required = parameters.get("required")
        # A string here ("query") would be read letter by letter as the names of required arguments.
        if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
            raise RowError(f"tools[{i}].parameters.required must be a list of argument names "
                           f"(got {json.dumps(required)[:40]})")
        if parameters.get("properties") is not None and not isinstance(parameters["properties"], dict):
            raise RowError(f"tools[{i}].parameters.properties must be an object")
    return tools


def sft_row(row: Any) -> dict[str, Any]:
    """One SFT row as {"messages": [...], "tools"?: [...]}: raises RowError saying what is wrong."""
    if not isinstance(row, dict):
        raise RowError("row must be a JSON object")
    key = "messages" if "messages" in row else "conversations" if "conversations" in row else None
    if key is None:
        raise RowError("missing 'messages' (or 'conversations')")
    messages = normalise_messages(row[key], key)
    if not any(m["role"] == "assistant" and _has_answer(m) for m in messages):
        raise RowError(f"'{key}' has no assistant turn to learn from")
    out: dict[str, Any] = {"messages": messages}
    if row.get("tools"):
        out["tools"] = _check_tools(row["tools"])
    return out


def _as_messages(value: Any, where: str, default_role: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"'{where}' is empty")
        return [{"role": default_role, "content": value}]
    return normalise_messages(value, where)


def kto_row(row: Any) -> dict[str, Any]:
    """One KTO row as conversational {"prompt": [...], "completion": [...], "label": bool}."""
    if not isinstance(row, dict):
        raise RowError("row must be a JSON object")
    if "label" not in row:
        raise RowError("missing 'label' (true for a desirable completion, false for an undesirable one)")
    label = row["label"]
    if not isinstance(label, bool):
        raise RowError(f"'label' must be true or false (got {json.dumps(label)})")
    if "prompt" in row or "completion" in row:
        for key in ("prompt", "completion"):
            if key not in row:
                raise RowError(f"missing '{key}'")
        prompt = _as_messages(row["prompt"], "prompt", "user")
        completion = _as_messages(row["completion"], "completion", "assistant")
        if completion[-1]["role"] != "assistant" or not _has_answer(completion[-1]):
            raise RowError("'completion' must end with an assistant turn")
    elif "conversations" in row or "messages" in row:
        key = "conversations" if "conversations" in row else "messages"
        messages = normalise_messages(row[key], key)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or not _has_answer(messages[last]):
            raise RowError(f"'{key}' has no assistant turn to use as the completion")
        if last == 0:
            raise RowError(f"'{key}' has no prompt before the last assistant turn")
        prompt, completion = messages[:last], [messages[last]]
    else:
        raise RowError("missing 'prompt'/'completion' (or 'conversations')")
    out: dict[str, Any] = {"prompt": prompt, "completion": completion, "label": label}
    if row.get("tools"):
        out["tools"] = _check_tools(row["tools"])
    return out


def iter_rows(path: str | Path, method: str, report: DatasetReport, *,
              max_rows: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(file line, row normalised for `method`) for each good row, streamed: memory stays at about one row
    whatever the file's size. `report` is filled as rows pass; once they are all read, DatasetError
    naming file:line for the rows that are not good (the first few, and how many in all)."""
    shown = str(path)
    convert = kto_row if method == "kto" else sft_row
    problems: list[DataProblem] = []
    total_problems = 0
    for number, line in iter_jsonl(Path(path)):
        try:
            if isinstance(line, RowError):
                raise line
            try:
                raw = json.loads(line)
            except RecursionError:
                raise RowError("nested too deeply to be a row") from None
            except ValueError as exc:
                message = getattr(exc, "msg", str(exc))
                where = f" at column {exc.colno}" if hasattr(exc, "colno") else ""
                raise RowError(f"not valid JSON ({message}{where})") from None
            del line
            row = convert(raw)
        except RowError as exc:
            total_problems += 1
            if len(problems) < MAX_REPORTED:
                problems.append(DataProblem(shown, number, str(exc)))
            continue
        report.rows += 1
        turns = row.get("messages") or (row.get("prompt", []) + row.get("completion", []))
        report.tool_calls += sum(len(m.get("tool_calls", ())) for m in turns)
        report.with_tools += bool(row.get("tools"))
        if method == "kto":
            report.desirable += bool(row["label"])
        if not problems:
            yield number, row
        if max_rows and report.rows >= max_rows:
            break
    if problems:
        raise DatasetError(problems, total_problems)
    _finish_report(report, shown, method)


def check_rows(path: str | Path, method: str, *, max_rows: int | None = None) -> DatasetReport:
    """What pre-flight needs: every row checked, none kept (a 100k-row file costs one row of memory)."""
    report = DatasetReport(path=str(path), method=method)
    for _ in iter_rows(path, method, report, max_rows=max_rows):
        pass
    return report


def load_rows(path: str | Path, method: str, *, max_rows: int | None = None) -> tuple[list[dict[str, Any]], DatasetReport]:
    """Every row of a JSONL file normalised for `method` (sft or kto), or DatasetError naming file:line."""
    report = DatasetReport(path=str(path), method=method)
    rows: list[dict[str, Any]] = []
    for number, row in iter_rows(path, method, report, max_rows=max_rows):
        rows.append(row)
        report.lines.append(number)
    return rows, report


def _finish_report(report: DatasetReport, shown: str, method: str) -> None:
    if not report.rows:
        raise DatasetError([DataProblem(shown, None, "no rows (the file is empty)")])
    if method == "kto":
        report.format = "kto"
        report.undesirable = report.rows - report.desirable
        if not report.desirable or not report.undesirable:
            missing = "false" if not report.undesirable else "true"
            raise DatasetError([DataProblem(shown, None, f"KTO needs both labels; no row has label {missing}")])
        share = report.desirable / report.rows
        if share < 0.2 or share > 0.8:
            report.warnings.append(
                f"labels are unbalanced: {report.desirable} desirable vs {report.undesirable} undesirable "
                "(consider training.desirable_weight / undesirable_weight)"
            )
    else:
        report.format = "messages"
