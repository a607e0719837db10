"""A GGUF file's tokenizer, read with gguf-py, checked against the Hugging Face tokenizer it was converted from.

Without llama-cpp-python (an opt-in tier) llama.cpp's own tokenizer cannot run
here, so this rebuilds what llama.cpp would do from what the GGUF holds: its
tokens and merges as a byte-level BPE, its control tokens kept whole, and the
pre-tokenizer regexes llama.cpp uses for the GGUF's `tokenizer.ggml.pre` name
(PRE_TOKENIZERS, from llama.cpp's src/llama-vocab.cpp as vendored in
llama-cpp-python 0.3.36). The llama_cpp tier runs llama.cpp itself on the same
texts (tests/test_llama_cpp.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every model family the exporter converts, checked by tests/test_gguf_tokens.py (and the llama_cpp tier):
# family -> (the fixture that builds its model, the pre-tokenizer llama.cpp must be given for it,
# whether that name is our fallback for a tokenizer llama.cpp does not recognise). One line per family.
FAMILIES = {
    "demo": ("demo_model", "gpt-2", True),  # trained locally: llama.cpp cannot know its hash
    "smollm2": ("real_model", "smollm", False),
}

# llama.cpp's GPT-2 regex is ByteLevel's own; "smollm" (like starcoder, refact, command-r) splits every digit first.
# A name missing here fails the check with that name, so a new family's pre-tokenizer is added, never guessed.
PRE_TOKENIZERS = {
    "gpt-2": (),
    "smollm": (r"\p{N}",),
}
CONTROL, USER_DEFINED = 3, 4  # gguf TokenType values

# Texts whose tokenization differs between pre-tokenizers: contractions, digit runs, whitespace runs,
# non-Latin scripts and emoji, code, JSON with a tool call, and the chat template's own markers.
TEXTS = [
    "Hello world",
    "  leading spaces,   runs\n\n\ttabs and a trailing space ",
    "I'm sure they'll've done it; don't!",
    "1234567 + 89 = 1234656, 3.14159 and 2026-11-20",
    "naïve café – 東京 🤖",
    'def f(x):\n    return {"a": [1, 2]}\n',
    '<tool_call>{"name": "search_notes", "arguments": {"query": "podcast", "limit": 10}}</tool_call>',
]


@dataclass
class GGUFVocab:
    model: str
    pre: str
    tokens: list[str]
    merges: list[str]
    types: list[int]
    special_ids: dict[str, int | None]

    @classmethod
    def read(cls, path: Path) -> GGUFVocab:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))

        def value(key: str) -> Any:
            field = reader.get_field(key)
            return None if field is None else field.contents()

        return cls(value("tokenizer.ggml.model"), value("tokenizer.ggml.pre"), list(value("tokenizer.ggml.tokens")),
                   list(value("tokenizer.ggml.merges") or []), list(value("tokenizer.ggml.token_type")),
                   {name: value(f"tokenizer.ggml.{name}_token_id") for name in ("bos", "eos", "unknown", "padding")})

    def tokenizer(self):
        """A `tokenizers` tokenizer doing what llama.cpp does with this vocab (byte-level BPE only)."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        if self.model != "gpt2":
            raise NotImplementedError(f"tokenizer.ggml.model {self.model!r}: only byte-level BPE (gpt2) is rebuilt")
        if self.pre not in PRE_TOKENIZERS:
            raise KeyError(f"tokenizer.ggml.pre {self.pre!r} has no regexes in tests/gguf_tokens.py PRE_TOKENIZERS")
        bpe = models.BPE({token: i for i, token in enumerate(self.tokens)},
                         [tuple(merge.split(" ", 1)) for merge in self.merges], fuse_unk=False)
        tokenizer = Tokenizer(bpe)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in PRE_TOKENIZERS[self.pre]]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([AddedToken(self.tokens[i], special=True, normalized=False)
                                      for i, kind in enumerate(self.types) if kind in (CONTROL, USER_DEFINED)])
        return tokenizer


def sample_texts(hf_tokenizer) -> list[str]:
    """TEXTS and a chat with a tool call rendered by the model's own template (tools offered where it takes them)."""
    tool = {"type": "function", "function": {"name": "search_notes", "description": "Search the notes.",
                                             "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                                            "required": ["query"]}}}
    messages = [{"role": "system", "content": "Session 42, workspace ws_f308."},
                {"role": "user", "content": "Find the note about podcasts from 2025."},
                {"role": "assistant", "content": "Found 3 notes."}]
    chat = hf_tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False, add_generation_prompt=True)
    return [*TEXTS, chat]


def hf_merges(hf_tokenizer) -> list[str]:
    import json

    merges = json.loads(hf_tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    return [" ".join(m) if isinstance(m, list) else m for m in merges]


def mismatches(gguf: GGUFVocab, hf_tokenizer) -> list[str]:
    """Every way the GGUF's tokenizer differs from the Hugging Face one, as lines a reader can act on."""
    problems = []
    vocab = sorted(hf_tokenizer.get_vocab().items(), key=lambda item: item[1])
    if gguf.tokens[:len(vocab)] != [token for token, _ in vocab]:
        first = next(i for i, (token, _) in enumerate(vocab) if i >= len(gguf.tokens) or gguf.tokens[i] != token)
        problems.append(f"tokens differ from id {first}")
    if gguf.merges != hf_merges(hf_tokenizer):
        problems.append(f"merges differ ({len(gguf.merges)} in the GGUF, {len(hf_merges(hf_tokenizer))} in HF)")
    control = {i for i, kind in enumerate(gguf.types) if kind == CONTROL}
    special = {hf_tokenizer.convert_tokens_to_ids(t) for t in hf_tokenizer.all_special_tokens}
    if not special <= control:
        problems.append(f"special tokens not marked control: {sorted(special - control)}")
    for name, hf_name in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unknown", "unk_token_id"),
                          ("padding", "pad_token_id")):
        hf_id = getattr(hf_tokenizer, hf_name)
        if hf_id is not None and gguf.special_ids[name] != hf_id:
            problems.append(f"{name} token id {gguf.special_ids[name]} in the GGUF, {hf_id} in HF")
    rebuilt = gguf.tokenizer()
    for text in sample_texts(hf_tokenizer):
        expected = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        got = rebuilt.encode(text, add_special_tokens=False).ids
        if got != expected:
            problems.append(f"{text[:40]!r}: GGUF {got[:12]}..., HF {expected[:12]}...")
    return problems
