"""Chat templates: which template a run trains with, the loss mask it gives, and what pre-flight refuses.

Proven on the real model (SmolLM2-135M-Instruct: a stock ChatML template with
no tool support and no {% generation %} markers) and on the demo model, whose
template is just as plain.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO

from trainers import chat_templates as ct
from trainers.data import load_rows

SFT = EXAMPLES / "data" / "sft_tool_calls.jsonl"
KTO = EXAMPLES / "data" / "kto_tool_calls.jsonl"
CHAT = [{"role": "system", "content": "You are terse and kind to everyone."},
        {"role": "user", "content": "Hello there, how are you doing today?"},
        {"role": "assistant", "content": "Very well."},
        {"role": "user", "content": "Tell me something about owls, please."},
        {"role": "assistant", "content": "They fly at night."}]


def tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def learned(tok, ids, mask) -> str:
    return tok.decode([t for t, m in zip(ids, mask) if m])


def sft_rows():
    return load_rows(SFT, "sft")


@pytest.mark.parametrize("name", list(ct.BUILTINS))
def test_every_builtin_renders_the_whole_tool_conversation_and_trains_only_the_assistant(demo_model, name):
    tok = tokenizer(demo_model)
    choice = ct.choose_template(tok, name, needs_tools=True)
    ct.prepare_tokenizer(tok, choice)
    probe = ct.probe_template(tok, tok.chat_template)
    assert (probe["tools"], probe["tool_calls"], probe["tool_results"]) == (True, True, True)
    assert probe["tool_format"] == ct.BUILTINS[name].tool_format == choice.tool_format
    rows, _ = sft_rows()
    # The same template with its markers taken out: the mask derived from the template itself must be
    # exactly the one the markers give.
    unmarked = tokenizer(demo_model)
    ct.prepare_tokenizer(unmarked, choice)
    unmarked.chat_template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", choice.template)
    for row in rows[:25]:
        ids, mask, strategy = ct.encode(tok, row["messages"], row.get("tools"))
        assert strategy == "markers"
        assert ct.encode(unmarked, row["messages"], row.get("tools"))[:2] == (ids, mask)
        text = learned(tok, ids, mask)
        # What is left of the learned text once every answer is taken out: an answer may echo the user.
        rest = text
        for message in row["messages"]:
            if message["role"] == "assistant" and message["content"]:
                rest = rest.replace(message["content"], "")
        for message in row["messages"]:
            if message["role"] == "assistant":
                for call in message.get("tool_calls") or []:
                    assert call["function"]["name"] in text
                    assert json.dumps(call["function"]["arguments"]) in text
                if message["content"]:
                    assert message["content"] in text
            elif message["role"] in ("system", "user"):
                assert message["content"] not in rest
            else:
                assert message["content"] not in rest, "tool results are read, not written, by the model"


def test_auto_picks_a_tool_capable_template_for_a_model_whose_own_drops_tool_calls(real_model):
    tok = tokenizer(real_model)
    probe = ct.probe_template(tok, tok.chat_template)
    assert (probe["tools"], probe["tool_calls"]) == (False, False)
    choice = ct.choose_template(tok, "auto", needs_tools=True)
    assert (choice.name, choice.source, choice.family, choice.tool_format) == ("chatml-tools", "builtin", "chatml",
                                                                                 "hermes")
    assert choice.reason == ("the model's own template drops tool definitions and tool calls; using chatml-tools, "
                             "the built-in for its chatml family")
    assert ct.missing_tokens(tok, choice) == [], "SmolLM2 already has the ChatML tokens"
    # No tools in the data: the model's own template is left alone; `model` never substitutes.
    assert ct.choose_template(tok, "auto", needs_tools=False).source == "model"
    assert ct.choose_template(tok, "model", needs_tools=True).template == tok.chat_template


def test_the_mask_is_derived_from_a_template_without_markers(real_model):
    tok = tokenizer(real_model)
    assert not ct.has_generation_markers(tok.chat_template)
    ids, mask, strategy = ct.encode(tok, CHAT)
    assert strategy == "prefix"
    # Every assistant turn, each up to and with its end-of-turn token; nothing of the prompt.
    assert learned(tok, ids, mask) == "Very well.<|im_end|>They fly at night.<|im_end|>"
    assert tok.decode(ids) == ct.render(tok, CHAT)


def test_a_template_that_renders_a_turn_differently_once_others_follow_is_refused(demo_model):
    tok = tokenizer(demo_model)
    # Marks the last assistant turn only, as templates that strip reasoning from earlier turns do.
    tok.chat_template = ("{%- for m in messages %}{{- '<|im_start|>' + m.role + '\n' + m.content }}"
                         "{%- if loop.last and m.role == 'assistant' %}{{- ' (latest)' }}{%- endif %}"
                         "{{- '<|im_end|>\n' }}{%- endfor %}"
                         "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")
    strategy, training, failed = ct.mask_strategy(tok, [{"messages": CHAT}])
    assert (strategy, training) == ("prefix", None)
    assert failed == [(0, "turn 2: the template renders this turn differently once later turns follow "
                          "(it is not prefix-preserving)")]


def test_trls_training_variant_masks_a_template_trl_knows(demo_model):
    import trl

    tok = tokenizer(demo_model)
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
    strategy, training, failed = ct.mask_strategy(tok, [{"messages": CHAT}])
    assert strategy == "trl" and training and not failed
    ids, mask, _ = ct.encode(tok, CHAT, strategy=strategy, training_template=training)
    text = learned(tok, ids, mask)
    assert "Very well." in text and "They fly at night." in text and "owls" not in text


def _with_family(demo_model, tokens: list[str], template: str):
    from tokenizers import AddedToken

    tok = tokenizer(demo_model)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in tokens], special_tokens=True)
    tok.chat_template = template
    return tok


def test_the_family_decides_which_builtin_auto_uses(demo_model):
    llama = _with_family(demo_model, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                         "{%- for m in messages %}{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' "
                         "+ m.content + '<|eot_id|>' }}{%- endfor %}")
    choice = ct.choose_template(llama, "auto", needs_tools=True)
    assert (choice.family, choice.name) == ("llama3", "llama3-json")
    assert ct.prepare_tokenizer(llama, choice) == [] and llama.eos_token == "<|eot_id|>"
    mistral = _with_family(demo_model, ["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                                        "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"],
                           "{%- for m in messages %}{{- '[INST] ' + m.content + '[/INST]' }}{%- endfor %}")
    assert ct.choose_template(mistral, "auto", needs_tools=True).name == "mistral-tools"
    # A template of another family needs its tokens: they are added (and trained by the trainer).
    tok = tokenizer(demo_model)
    before = len(tok)
    added = ct.prepare_tokenizer(tok, ct.choose_template(tok, "llama3-json", needs_tools=True))
    assert len(added) == 3 and len(tok) == before + 3
    assert [tok.convert_ids_to_tokens(i) for i in added] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def test_rows_that_would_lose_their_tool_calls_are_named_by_line(real_model):
    tok = tokenizer(real_model)
    rows, report = sft_rows()
    summary, findings = ct.check_rows(tok, rows, "sft", lines=report.lines)
    assert summary == {"rows_checked": 200, "rows": 200, "mask": "prefix"}
    with_calls = [i for i, row in enumerate(rows) if any(m.get("tool_calls") for m in row["messages"])]
    lost_call = {f.index for f in findings if "tool call" in f.problem}
    assert lost_call == set(with_calls)
    first = rows[with_calls[0]]
    name = next(m for m in first["messages"] if m.get("tool_calls"))["tool_calls"][0]["function"]["name"]
    assert any(f.index == with_calls[0] and f.problem.startswith(f"the rendered text loses tool call {name!r}")
               for f in findings)
    # With the template auto picks, nothing is lost.
    ct.prepare_tokenizer(tok, ct.choose_template(tok, "auto", needs_tools=True))
    assert ct.check_rows(tok, rows, "sft", lines=report.lines) == ({"rows_checked": 200, "rows": 200,
                                                                     "mask": "markers"}, [])


def test_kto_completions_that_render_alike_are_caught(real_model):
    tok = tokenizer(real_model)
    rows, report = load_rows(KTO, "kto")
    _, findings = ct.check_rows(tok, rows, "kto", lines=report.lines)
    same = [f for f in findings if "renders to the same text" in f.problem]
    assert same and "their gradients cancel" in same[0].problem
    ct.prepare_tokenizer(tok, ct.choose_template(tok, "auto", needs_tools=True))
    assert ct.check_rows(tok, rows, "kto", lines=report.lines)[1] == []


def _train(*args: str, runs_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synaptic_tui", "train", "--runs-dir", str(runs_dir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


def test_preflight_refuses_the_models_own_template_when_it_drops_tool_calls(real_model, runs_dir):
    out = _train("--model", "smollm2", "--dataset", str(SFT), "--set", "model.chat_template=model", "--yes",
                 runs_dir=runs_dir)
    assert out.returncode == 2, out.stderr
    assert re.search(rf"error +template +{re.escape(str(SFT))}:\d+: the rendered text loses tool call '", out.stderr)
    assert ("the run would train on text that lost the data; fix: set model.chat_template: auto "
            "(it uses chatml-tools for this model)") in out.stderr
    assert list(runs_dir.iterdir()) == [], "nothing was launched or created"


def test_preflight_with_auto_says_which_template_it_picked(real_model, runs_dir):
    out = _train("--model", "smollm2", "--dataset", str(SFT), "--dry-run", "--json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["preflight"]
    assert report["ok"] and report["chat_template"]["name"] == "chatml-tools"
    assert report["chat_template"]["mask"] == "markers"
    assert {"level": "info", "topic": "template",
            "message": "training with chatml-tools, not the model's own template: the model's own template drops "
                       "tool definitions and tool calls; using chatml-tools, the built-in for its chatml family"
            } in report["findings"]
    assert report["token_stats"]["mean"] > 300, "counted with the template that renders the tools"


def test_a_template_file_that_cannot_be_read_is_a_config_error(runs_dir, tmp_path):
    out = _train("--set", f"model.chat_template={tmp_path / 'missing.jinja'}", "--dry-run", runs_dir=runs_dir)
    assert out.returncode == 2
    assert "model.chat_template" in out.stderr and "neither a built-in nor a Jinja file" in out.stderr
