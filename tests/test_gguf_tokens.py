"""GGUF tokenization equals the Hugging Face tokenizer's, for every model family the exporter converts.

What llama.cpp reads from the file (tokens, merges, control tokens, special token ids, the pre-tokenizer
name) is compared with the tokenizer it was converted from, and the fixed texts of tests/gguf_tokens.py are
tokenized both ways. llama.cpp itself tokenizes the same texts in the llama_cpp tier.
"""

from __future__ import annotations

import json
import shutil

import pytest
from gguf_tokens import FAMILIES, GGUFVocab, mismatches, sample_texts

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_gguf_tokenizes_as_the_hugging_face_tokenizer_does(family, family_gguf):
    from transformers import AutoTokenizer

    model_dir, record = family_gguf(family)
    _, pre, fallback = FAMILIES[family]
    vocab = GGUFVocab.read(record["path"])
    assert (vocab.model, vocab.pre) == ("gpt2", pre)
    assert record["verify"]["pre_tokenizer"] == pre
    # The export records (and its report and model card show) when the name is our stand-in.
    assert record.get("pre_tokenizer_fallback") == ("gpt-2" if fallback else None)
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    assert len(vocab.tokens) == len(hf) and vocab.special_ids["eos"] == hf.eos_token_id
    assert mismatches(vocab, hf) == []


def test_the_check_catches_a_pre_tokenizer_the_fallback_gets_wrong(demo_model, tmp_path):
    """A tokenizer that splits digits one by one, which llama.cpp does not recognise: the gpt-2 fallback then
    merges digit runs the Hugging Face tokenizer never merges, and the comparison says where."""
    from transformers import AutoTokenizer

    from trainers.gguf import build_gguf

    model = tmp_path / "digits-model"
    shutil.copytree(demo_model, model)
    tokenizer_json = json.loads((model / "tokenizer.json").read_text())
    tokenizer_json["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{N}"}, "behavior": "Isolated", "invert": False},
        tokenizer_json["pre_tokenizer"]]}
    (model / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    record = build_gguf("gguf-f16", model, tmp_path / "gguf-f16", "digits", lambda *args: None)
    assert record["pre_tokenizer_fallback"] == "gpt-2"
    hf = AutoTokenizer.from_pretrained(model)
    problems = mismatches(GGUFVocab.read(tmp_path / "gguf-f16" / record["file"]), hf)
    # Vocab, merges and special ids are right; exactly the texts with digits in them tokenize differently.
    with_digits = [repr(text[:40]) for text in sample_texts(hf) if any(c.isdigit() for c in text)]
    assert len(with_digits) == 4 and [problem.split(": GGUF ")[0] for problem in problems] == with_digits
