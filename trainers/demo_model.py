"""The embedded demo model: a tiny random-weight Llama with a locally trained tokenizer, built offline in seconds.

`python -m trainers.demo_model [PATH]` (or `synaptic-tui demo-model`). It is
what the default config trains, what the tests train, and what the eval tests
serve: small enough for a CPU, real enough for every library on the path
(transformers, TRL, PEFT, mlx-lm, llama.cpp's converter).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

from synaptic_tui.paths import demo_model_dir

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKER = "synaptic_demo.json"

# Plain ChatML, as most instruct models ship it: role and content only, no tools, no {% generation %}
# markers. The trainers must cope with that (trainers.chat_templates picks chatml-tools for it), so the fast
# tests go through the same template substitution and derived masks as a real model does.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

WORDS = ("note notes folder workspace session search read create append list project meeting idea draft plan "
         "summary today tomorrow week rust python recipe garden travel budget book film music reading writing "
         "the a an of to in for on with about from my your our please can you could find show open make add "
         "write keep what where when which how is are was were will would there here this that these those").split()
TOOL_NAMES = ("search_notes", "read_note", "create_note", "append_to_note", "list_folder", "get_workspace")


def _corpus(seed: int) -> list[str]:
    """Deterministic text with the shapes the model will see: prose, JSON tool calls, ids, paths."""
    rng = random.Random(seed)
    lines = []
    for i in range(3000):
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + rng.choice(".?!")
        lines.append(sentence)
        if i % 3 == 0:
            args = {"query": rng.choice(WORDS), "limit": rng.randint(1, 20),
                    "path": f"{rng.choice(WORDS)}/{rng.choice(WORDS)}.md",
                    "sessionId": f"sess_{rng.randrange(16**6):06x}", "workspaceId": f"ws_{rng.randrange(16**4):04x}"}
            lines.append(f'<tool_call>{{"name": "{rng.choice(TOOL_NAMES)}", "arguments": {json.dumps(args)}}}</tool_call>')
    lines.append("0123456789 {}[]()<>:;,.'\"!?-_/\\|@#$%^&*+=~` \t\n")
    return lines


def _is_complete(path: Path) -> bool:
    return all((path / name).exists() for name in (MARKER, "config.json", "model.safetensors", "tokenizer.json"))


def build_demo_model(path: Path | None = None, *, seed: int = 0, force: bool = False,
                     hidden_size: int = 64, num_layers: int = 2) -> tuple[Path, bool]:
    """Build (or reuse) the demo model at `path`; returns (path, whether it was built now).

    The size knobs exist for benchmarks that need a GPU-sized model with the same tokenizer.
    """
    path = Path(path or demo_model_dir()).expanduser().resolve()
    if _is_complete(path) and not force:
        return path, False

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_corpus(seed), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      unk_token="<|endoftext|>", model_max_length=2048)
    wrapped.chat_template = CHAT_TEMPLATE

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(wrapped), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=wrapped.eos_token_id, pad_token_id=wrapped.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = wrapped.eos_token_id
    model.generation_config.pad_token_id = wrapped.pad_token_id

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(staging)
        wrapped.save_pretrained(staging)
        parameters = sum(p.numel() for p in model.parameters())
        import transformers

        (staging / MARKER).write_text(json.dumps({"seed": seed, "parameters": parameters,
                                                  "transformers": transformers.__version__}, indent=2))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", help=f"where to write it (default: {demo_model_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete demo model is there")
    parser.add_argument("--json", action="store_true", help="print {path, parameters, built} as JSON")
    args = parser.parse_args(argv)
    path, built = build_demo_model(Path(args.path) if args.path else None, force=args.force)
    parameters = json.loads((path / MARKER).read_text())["parameters"]
    if args.json:
        print(json.dumps({"path": str(path), "parameters": parameters, "built": built}))
    else:
        print(f"{'built' if built else 'already built'}: demo model ({parameters:,} parameters) at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
