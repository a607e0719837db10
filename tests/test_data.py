"""Training data checks: the formats accepted, and every way a file can be wrong (named file:line)."""

from __future__ import annotations

import json

import pytest

from trainers.data import DatasetError, kto_row, load_rows, sft_row


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


TOOL_ROW = {
    "messages": [
        {"role": "system", "content": "You manage notes."},
        {"role": "user", "content": "Find my notes on rust"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "search_notes", "arguments": "{\"query\": \"rust\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "[\"rust.md\"]"},
        {"role": "assistant", "content": "You have rust.md."},
    ],
    "tools": [{"type": "function", "function": {"name": "search_notes", "parameters": {"type": "object"}}}],
}


def test_openai_messages_with_tool_calls_are_normalised():
    row = sft_row(TOOL_ROW)
    call = row["messages"][2]["tool_calls"][0]
    assert call == {"type": "function", "function": {"name": "search_notes", "arguments": {"query": "rust"}}, "id": "c1"}
    assert row["messages"][2]["content"] == ""
    assert row["messages"][3] == {"role": "tool", "content": "[\"rust.md\"]", "tool_call_id": "c1"}
    assert row["tools"] == TOOL_ROW["tools"]


def test_sharegpt_rows_become_openai_roles():
    row = sft_row({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "hi"},
                                     {"from": "gpt", "value": "hello"}]})
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


def test_kto_prompt_completion_strings_and_conversations():
    row = kto_row({"prompt": "hi", "completion": "hello", "label": True})
    assert row == {"prompt": [{"role": "user", "content": "hi"}],
                   "completion": [{"role": "assistant", "content": "hello"}], "label": True}
    conv = kto_row({"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
                    "label": False})
    assert [m["content"] for m in conv["prompt"]] == ["a", "b", "c"]
    assert conv["completion"] == [{"role": "assistant", "content": "d"}] and conv["label"] is False


@pytest.mark.parametrize(("method", "lines", "expected"), [
    ("sft", ['{"messages": [}'], "data.jsonl:1: not valid JSON"),
    ("sft", [{"text": "plain"}], "data.jsonl:1: missing 'messages' (or 'conversations')"),
    ("sft", [TOOL_ROW, {"messages": [{"role": "user", "content": "hi"}]}], "data.jsonl:2: 'messages' has no assistant turn"),
    ("sft", [{"messages": [{"role": "wizard", "content": "x"}]}], "data.jsonl:1: messages[0]: unknown role 'wizard'"),
    ("sft", [{"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": "{oops"}}]}]}], "data.jsonl:1: messages[0].tool_calls[0]: arguments are not valid JSON"),
    ("kto", [{"prompt": "a", "completion": "b"}], "data.jsonl:1: missing 'label'"),
    ("kto", [{"prompt": "a", "completion": "b", "label": "yes"}], "data.jsonl:1: 'label' must be true or false (got \"yes\")"),
    ("kto", [{"prompt": "a", "completion": "b", "label": True}] * 3, "data.jsonl: KTO needs both labels; no row has label false"),
])
def test_bad_rows_name_file_and_line(tmp_path, method, lines, expected):
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    with pytest.raises(DatasetError) as err:
        load_rows(path, method)
    first = str(err.value).splitlines()[0]
    assert first.replace(str(tmp_path) + "/", "").startswith(expected)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="empty.jsonl: no rows"):
        load_rows(tmp_path / "empty.jsonl", "sft")
    with pytest.raises(DatasetError, match="missing.jsonl: file not found"):
        load_rows(tmp_path / "missing.jsonl", "sft")


def test_many_problems_are_capped_with_a_count(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", ["{bad"] * 25)
    with pytest.raises(DatasetError) as err:
        load_rows(path, "sft")
    lines = str(err.value).splitlines()
    assert len(lines) == 11 and lines[-1] == "... and 15 more problems"
    assert err.value.total == 25


def test_report_counts_and_kto_balance_warning(tmp_path):
    rows = [{"prompt": "a", "completion": "b", "label": i == 0} for i in range(10)]
    _, report = load_rows(write_jsonl(tmp_path / "k.jsonl", rows), "kto")
    assert (report.rows, report.desirable, report.undesirable) == (10, 1, 9)
    assert report.warnings and "unbalanced" in report.warnings[0]
    _, sft_report = load_rows(write_jsonl(tmp_path / "s.jsonl", [TOOL_ROW] * 3), "sft")
    assert (sft_report.rows, sft_report.tool_calls, sft_report.with_tools) == (3, 3, 3)


def test_max_rows(tmp_path):
    rows, report = load_rows(write_jsonl(tmp_path / "s.jsonl", [TOOL_ROW] * 9), "sft", max_rows=4)
    assert len(rows) == 4 == report.rows
