"""Chat templates: which one a run trains with, the loss mask it gives, and the tool-call format it writes.

Training text is what the chat template renders, so the template is part of
the data. This module is the one place that decides it, for the TRL and MLX
trainers, pre-flight's probe and the exporter alike:

- `choose_template`: `model.chat_template` is `auto` (the model's own when it
  renders tools, tool calls and tool results, else the built-in of the model's
  family), `model`, a built-in name (BUILTINS) or a path to a Jinja file;
- `prepare_tokenizer`: puts the chosen template on the tokenizer and adds the
  special tokens it needs that the vocabulary lacks;
- `encode`: token ids and the loss mask of one conversation. The mask comes
  from `{% generation %}` markers where the template has them; otherwise it
  is derived from the template itself: the conversation rendered up to each
  assistant turn (with the generation prompt) must be a prefix of it rendered
  with that turn, and the difference is what the assistant said; where that
  fails, TRL's training variant of the template is used if TRL has one;
- `check_rows`: what pre-flight reports per row (tools, tool calls and tool
  results rendered; mask derivable and covering the answer; KTO completions
  kept apart).

Nothing here imports torch or transformers: a tokenizer is passed in.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class Builtin:
    name: str
    family: str
    tool_format: str  # the name vLLM's --tool-call-parser and our evaluator use for it
    special_tokens: tuple[str, ...]  # must each be one token; added to the vocabulary where they are not
    end_of_turn: str | None  # the token generation stops at; None: the tokenizer's own eos
    description: str

    @property
    def source(self) -> str:
        return (TEMPLATES_DIR / f"{self.name}.jinja").read_text(encoding="utf-8")


BUILTINS = {b.name: b for b in (
    Builtin("chatml-tools", "chatml", "hermes", ("<|im_start|>", "<|im_end|>"), "<|im_end|>",
            "ChatML with Hermes/Qwen2.5-style <tool_call> JSON"),
    Builtin("llama3-json", "llama3", "llama3_json",
            ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>",
            "Llama 3.1/3.2 headers with JSON tool calls"),
    Builtin("mistral-tools", "mistral", "mistral",
            ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
             "[/TOOL_RESULTS]"), None, "Mistral [INST] turns with [TOOL_CALLS]"),
)}
# A token only a family's tokenizer has, and the built-in that family gets.
FAMILY_MARKERS = {"chatml": "<|im_start|>", "llama3": "<|start_header_id|>", "mistral": "[INST]"}
FAMILY_BUILTIN = {"chatml": "chatml-tools", "llama3": "llama3-json", "mistral": "mistral-tools"}
SETTINGS = ("auto", "model", *BUILTINS)

# A conversation whose every part must survive rendering; distinct sentinels tell which part a template drops.
_TOOL = "synaptic_probe_tool"
_ARG_KEY, _ARG_VALUE, _RESULT = "probe_arg_5f1c", "probe_value_9b2e", "probe_result_4d7a"
PROBE_TOOLS = [{"type": "function", "function": {
    "name": _TOOL, "description": "Checks that the chat template renders tools.",
    "parameters": {"type": "object", "properties": {_ARG_KEY: {"type": "string"}}, "required": [_ARG_KEY]}}}]
PROBE_MESSAGES = [
    {"role": "system", "content": "You are a probe."},
    {"role": "user", "content": "Call the probe."},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": _TOOL, "arguments": {_ARG_KEY: _ARG_VALUE}}}]},
    {"role": "tool", "content": _RESULT},
    {"role": "assistant", "content": "Done."},
]


class TemplateError(ValueError):
    """The template cannot give this run correct training text; the message says how to fix it."""


@dataclass
class TemplateChoice:
    name: str  # the model's, a built-in's name, or the file's path
    source: str  # model | builtin | file
    template: str
    family: str | None
    tool_format: str | None  # hermes, llama3_json, mistral, json; None when it renders no tool calls
    reason: str
    renders_tools: bool = False
    special_tokens: list[str] = field(default_factory=list)  # those the template needs as single tokens
    end_of_turn: str | None = None
    added_tokens: list[str] = field(default_factory=list)  # filled by prepare_tokenizer
    mask: str | None = None  # markers | prefix | trl, once encode_rows decided

    @property
    def substituted(self) -> bool:
        return self.source != "model"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("template")
        return data


# --- which template ------------------------------------------------------------------------


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and GENERATION_MARKER.search(template) is not None


def model_family(tokenizer) -> str | None:
    """chatml, llama3 or mistral: from the markers the model's own template writes, else from the tokens
    only that family's tokenizer has."""
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    for family, marker in FAMILY_MARKERS.items():
        if own and marker in own:
            return family
    vocab = tokenizer.get_vocab()
    return next((family for family, marker in FAMILY_MARKERS.items() if marker in vocab), None)


def render(tokenizer, messages: list[dict[str, Any]], tools: list | None = None, template: str | None = None,
           add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                         add_generation_prompt=add_generation_prompt,
                                         **({"chat_template": template} if template else {}))


def probe_template(tokenizer, template: str | None) -> dict[str, Any]:
    """What a template keeps of a tool-calling conversation: {renders, tools, tool_calls, tool_results, error}."""
    report = {"renders": False, "tools": False, "tool_calls": False, "tool_results": False, "error": None,
              "tool_format": None}
    if not template:
        report["error"] = "no chat template"
        return report
    try:
        text = render(tokenizer, PROBE_MESSAGES, PROBE_TOOLS, template)
    except Exception as exc:  # a template that raises on tool messages or roles says so through any error
        report["error"] = f"{type(exc).__name__}: {exc}"
        return report
    report["renders"] = True
    report["tools"] = "Checks that the chat template renders tools." in text
    report["tool_calls"] = _TOOL in text.replace("Checks that the chat template renders tools.", "") \
        and _ARG_KEY in text and _ARG_VALUE in text
    report["tool_results"] = _RESULT in text
    report["tool_format"] = tool_format_of(text) if report["tool_calls"] else None
    return report


def tool_format_of(text: str) -> str:
    """The format a template writes tool calls in, from its rendering of a call."""
    if "<tool_call>" in text:
        return "hermes"
    if "[TOOL_CALLS]" in text:
        return "mistral"
    if re.search(r'"name":\s*"[^"]+",\s*"parameters"', text) or "<|python_tag|>" in text:
        return "llama3_json"
    return "json"


def data_needs_tools(rows: Iterable[dict[str, Any]]) -> bool:
    for row in rows:
        if row.get("tools"):
            return True
        for message in row.get("messages") or (row.get("prompt", []) + row.get("completion", [])):
            if message.get("tool_calls") or message.get("role") == "tool":
                return True
    return False


def choose_template(tokenizer, setting: str, needs_tools: bool) -> TemplateChoice:
    """The template a run trains with, and why. Raises TemplateError when there is none that works."""
    setting = setting or "auto"
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if isinstance(tokenizer.chat_template, dict):  # named variants: the default one is what chat uses
        own = tokenizer.chat_template.get("default")
    family = model_family(tokenizer)
    if setting in BUILTINS:
        return _builtin_choice(BUILTINS[setting], family, f"model.chat_template is {setting}")
    if setting not in ("auto", "model"):
        path = Path(setting).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"model.chat_template {setting}: cannot read it ({exc.strerror or exc}); give a "
                                f"Jinja file, or one of: {', '.join(SETTINGS)}") from None
        probe = probe_template(tokenizer, text)
        return TemplateChoice(str(path), "file", text, family, probe["tool_format"], f"the template in {path}",
                              renders_tools=probe["tools"] and probe["tool_calls"])
    probe = probe_template(tokenizer, own)
    complete = probe["tools"] and probe["tool_calls"] and probe["tool_results"]
    if setting == "model":
        if not own:
            raise TemplateError("the model has no chat template and model.chat_template is model: set it to auto "
                                f"(or one of {', '.join(BUILTINS)}, or a Jinja file)")
        return TemplateChoice("model", "model", own, family, probe["tool_format"],
                              "model.chat_template is model: the model's own template, unchanged",
                              renders_tools=complete)
    if own and (complete or not needs_tools):
        why = ("the model's own template renders tools, tool calls and tool results" if complete
               else "the model's own template (the data has no tools or tool calls)")
        return TemplateChoice("model", "model", own, family, probe["tool_format"], why, renders_tools=complete)
    builtin = BUILTINS[FAMILY_BUILTIN.get(family or "", "chatml-tools")]
    if not own:
        lost = "the model has no chat template"
    else:
        dropped = [part for part, key in (("tool definitions", "tools"), ("tool calls", "tool_calls"),
                                          ("tool results", "tool_results")) if not probe[key]]
        listed = ", ".join(dropped[:-1]) + f" and {dropped[-1]}" if len(dropped) > 1 else dropped[0]
        lost = (f"the model's own template cannot render a tool conversation ({probe['error']})" if probe["error"]
                else f"the model's own template drops {listed}")
    kin = f"the built-in for its {family} family" if family else "no built-in matches its family, so ChatML"
    return _builtin_choice(builtin, family, f"{lost}; using {builtin.name}, {kin}")


def _builtin_choice(builtin: Builtin, family: str | None, reason: str) -> TemplateChoice:
    return TemplateChoice(builtin.name, "builtin", builtin.source, family, builtin.tool_format, reason,
                          renders_tools=True, special_tokens=list(builtin.special_tokens),
                          end_of_turn=builtin.end_of_turn)


def builtin_for(template: str | None) -> Builtin | None:
    """The built-in a template string is (as saved with a run's checkpoints), if it is one."""
    if not template:
        return None
    return next((b for b in BUILTINS.values() if b.source.strip() == template.strip()), None)


def ollama_template(template: str | None) -> str | None:
    """The same template in Ollama's Go template language, for the built-ins that have one.

    Ollama does not run a GGUF's Jinja template; it needs a TEMPLATE whose .ToolCalls block shows the
    format, and then parses the model's tool calls back into tool_calls itself.
    """
    builtin = builtin_for(template)
    path = TEMPLATES_DIR / "ollama" / f"{builtin.name}.gotmpl" if builtin else None
    return path.read_text(encoding="utf-8") if path and path.is_file() else None


def missing_tokens(tokenizer, choice: TemplateChoice) -> list[str]:
    """The template's special tokens that the vocabulary does not hold as one token."""
    vocab = tokenizer.get_vocab()
    return [t for t in choice.special_tokens if t not in vocab]


def prepare_tokenizer(tokenizer, choice: TemplateChoice) -> list[int]:
    """Put the chosen template on the tokenizer; add the special tokens it lacks. Returns the added ids.

    The caller resizes the model's embeddings for them and trains their rows.
    """
    tokenizer.chat_template = choice.template
    added: list[int] = []
    missing = missing_tokens(tokenizer, choice)
    if missing:
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
        vocab = tokenizer.get_vocab()
        added = [vocab[t] for t in missing]
        choice.added_tokens = list(missing)
    if choice.end_of_turn and tokenizer.eos_token != choice.end_of_turn:
        # Generation must stop where the template ends a turn.
        tokenizer.eos_token = choice.end_of_turn
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return added


# --- the loss mask ---------------------------------------------------------------------------


class MaskError(ValueError):
    """The assistant-only mask cannot be derived for this conversation."""


def _assistant_spans(tokenizer, messages: list[dict[str, Any]], tools, template: str | None) -> tuple[str, list[tuple[int, int]]]:
    """(the whole rendering, the character span of every assistant turn in it), derived by prefixes."""
    full = render(tokenizer, messages, tools, template)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], tools, template, add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1], tools, template)
        if not upto.startswith(before):
            raise MaskError(f"turn {i}: the conversation up to the assistant's turn, with the generation prompt, "
                            "is not a prefix of it with the turn")
        if not full.startswith(upto):
            raise MaskError(f"turn {i}: the template renders this turn differently once later turns follow "
                            "(it is not prefix-preserving)")
        end = len(upto.rstrip())  # the separator after the end-of-turn token belongs to no one
        if end <= len(before):
            raise MaskError(f"turn {i}: the assistant's turn renders to nothing")
        spans.append((len(before), end))
    return full, spans


def _mask_from_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = []
    for start, end in encoded["offset_mapping"]:
        inside = any(s <= start < e for s, e in spans) and end > start
        mask.append(1 if inside else 0)
    return list(encoded["input_ids"]), mask


def trl_training_template(tokenizer) -> str | None:
    """TRL's training variant of the tokenizer's template (prefix-preserving, with markers), if TRL has one."""
    try:
        from trl.chat_template_utils import get_training_chat_template
    except Exception:  # TRL is not in every environment (the MLX one): the prefix rule then has to do
        return None
    try:
        return get_training_chat_template(tokenizer)
    except Exception:
        return None


def encode(tokenizer, messages: list[dict[str, Any]], tools=None, *, assistant_only: bool = True,
           strategy: str | None = None, training_template: str | None = None) -> tuple[list[int], list[int], str]:
    """(token ids, loss mask, strategy) of one conversation under the tokenizer's template.

    strategy: markers (the template's {% generation %}), prefix (derived), trl (TRL's training variant
    with markers), all (every token, when assistant-only loss is off); None picks markers or prefix.
    """
    template = tokenizer.chat_template
    if not assistant_only:
        ids = tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=True, return_dict=True)["input_ids"]
        return list(ids), [1] * len(ids), "all"
    if strategy is None:
        strategy = "markers" if has_generation_markers(template) else "prefix"
    if strategy in ("markers", "trl"):
        use = training_template if strategy == "trl" else None
        encoded = tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True,
                                                **({"chat_template": use} if use else {}))
        mask = list(encoded["assistant_masks"])
        if not any(mask):
            raise MaskError("the template's {% generation %} markers enclose nothing")
        return list(encoded["input_ids"]), mask, strategy
    text, spans = _assistant_spans(tokenizer, messages, tools, None)
    ids, mask = _mask_from_spans(tokenizer, text, spans)
    if not any(mask):
        raise MaskError("no token falls inside an assistant turn")
    return ids, mask, "prefix"


def mask_strategy(tokenizer, rows: list[dict[str, Any]]) -> tuple[str, str | None, list[tuple[int, str]]]:
    """(strategy, TRL's training template or None, [(row index, why)] of rows no strategy can mask).

    One strategy for the whole run: markers when the template has them, else prefix when every row's
    turns can be derived, else TRL's training variant when TRL has one for this template.
    """
    if has_generation_markers(tokenizer.chat_template):
        return "markers", None, []
    failed = []
    for index, row in enumerate(rows):
        for messages in _conversations(row):
            try:
                _assistant_spans(tokenizer, messages, row.get("tools"), None)
            except MaskError as exc:
                failed.append((index, str(exc)))
                break
    if not failed:
        return "prefix", None, []
    training = trl_training_template(tokenizer)
    if training is not None:
        return "trl", training, []
    return "prefix", None, failed


def _conversations(row: dict[str, Any]) -> list[list[dict[str, Any]]]:
    if "messages" in row:
        return [row["messages"]]
    return [row["prompt"] + row["completion"]]


# --- pre-flight's checks of real rows ----------------------------------------------------------


def _leaves(value: Any) -> Iterable[str]:
    """The keys and scalar values of tool-call arguments, as they may appear in rendered text."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, str):
        if value:
            yield value
    elif value is not None:
        yield json.dumps(value)


def _appears(piece: str, text: str) -> bool:
    return piece in text or json.dumps(piece)[1:-1] in text


def lost_parts(text: str, messages: list[dict[str, Any]], tools: list | None) -> list[str]:
    """What of the data the rendered text lost: tool calls (name, arguments), tool results, tool definitions."""
    calls, results, definitions = [], [], []
    for message in messages:
        for call in message.get("tool_calls") or []:
            function = call.get("function") or call
            if function["name"] not in text:
                calls.append(f"tool call {function['name']!r}")
                continue
            missing = [leaf for leaf in _leaves(function.get("arguments")) if not _appears(leaf, text)]
            if missing:
                calls.append(f"arguments of {function['name']!r} ({missing[0][:40]!r})")
        if message["role"] == "tool" and message.get("content") and not _appears(message["content"].strip(), text):
            results.append("a tool result")
    for tool in tools or []:
        name = (tool.get("function") or tool).get("name")
        if name and name not in text:
            definitions.append(f"tool definition {name!r}")
    return calls + results + definitions


@dataclass
class RowFinding:
    index: int  # the row's position in the loaded rows (report.lines maps it to a file line)
    problem: str


def check_rows(tokenizer, rows: list[dict[str, Any]], method: str, *, assistant_only: bool = True,
               limit: int = 5000, lines: list[int] | None = None) -> tuple[dict[str, Any], list[RowFinding]]:
    """Render real rows with the tokenizer's (already chosen) template and say what would be lost.

    Returns (summary, findings). Any finding means the run would train on text that lost the data.
    """
    checked = rows[:limit]
    findings: list[RowFinding] = []
    summary: dict[str, Any] = {"rows_checked": len(checked), "rows": len(rows), "mask": None}
    if method == "kto":
        findings += _check_kto(tokenizer, checked, lines)
        summary["mask"] = "completion"
        return summary, findings
    for index, row in enumerate(checked):
        try:
            text = render(tokenizer, row["messages"], row.get("tools"))
        except Exception as exc:
            findings.append(RowFinding(index, f"the chat template cannot render this row ({type(exc).__name__}: "
                                              f"{str(exc)[:120]})"))
            continue
        lost = lost_parts(text, row["messages"], row.get("tools"))
        if lost:
            findings.append(RowFinding(index, f"the rendered text loses {', '.join(lost[:3])}"))
    if not assistant_only:
        summary["mask"] = "all"
        return summary, findings
    strategy, training, failed = mask_strategy(tokenizer, checked)
    summary["mask"] = strategy
    for index, why in failed:
        findings.append(RowFinding(index, f"the assistant-only loss mask cannot be derived: {why}"))
    if failed:
        return summary, findings
    for index, row in enumerate(checked):
        try:
            ids, mask, _ = encode(tokenizer, row["messages"], row.get("tools"), strategy=strategy,
                                  training_template=training)
        except MaskError as exc:
            findings.append(RowFinding(index, f"the assistant-only loss mask cannot be derived: {exc}"))
            continue
        learned = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        answers = [m for m in row["messages"] if m["role"] == "assistant"]
        lost = lost_parts(learned, answers, None)
        missing_text = [m["content"] for m in answers if m.get("content") and not _appears(m["content"].strip(), learned)]
        if lost or missing_text:
            findings.append(RowFinding(index, "the loss mask leaves out what the assistant says "
                                              f"({', '.join(lost[:2]) or repr(missing_text[0][:40])})"))
        leaked = [m["content"] for m in row["messages"] if m["role"] in ("user", "system")
                  and len(m.get("content") or "") >= 24 and m["content"] in learned]
        if leaked:
            findings.append(RowFinding(index, f"the loss mask trains on the prompt ({leaked[0][:40]!r})"))
    return summary, findings


def _check_kto(tokenizer, rows: list[dict[str, Any]], lines: list[int] | None) -> list[RowFinding]:
    findings = []
    rendered: dict[str, tuple[int, str, bool]] = {}  # completion text -> (first row, raw completion, label)
    for index, row in enumerate(rows):
        tools = row.get("tools")
        try:
            prompt = render(tokenizer, row["prompt"], tools, add_generation_prompt=True)
            full = render(tokenizer, row["prompt"] + row["completion"], tools)
        except Exception as exc:
            findings.append(RowFinding(index, f"the chat template cannot render this row ({type(exc).__name__}: "
                                              f"{str(exc)[:120]})"))
            continue
        if not full.startswith(prompt):
            findings.append(RowFinding(index, "the prompt rendered alone is not a prefix of prompt + completion, "
                                              "so the completion's start is a guess"))
            continue
        completion = full[len(prompt):]
        lost = lost_parts(completion, row["completion"], None) + [
            f"tool definition {name!r}" for name in
            [(t.get("function") or t).get("name") for t in tools or []] if name and name not in prompt]
        if lost:
            findings.append(RowFinding(index, f"the rendered text loses {', '.join(lost[:3])}"))
        raw = json.dumps(row["completion"], sort_keys=True)
        seen = rendered.get(completion)
        if seen is None:
            rendered[completion] = (index, raw, row["label"])
        elif seen[1] != raw and seen[2] != row["label"]:
            where = lines[seen[0]] if lines and seen[0] < len(lines) else f"row {seen[0] + 1}"
            findings.append(RowFinding(index, f"its {'desirable' if row['label'] else 'undesirable'} completion "
                                              f"renders to the same text as line {where}'s "
                                              f"{'desirable' if seen[2] else 'undesirable'} one, though the data "
                                              "differ: their gradients cancel"))
    return findings
