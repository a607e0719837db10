"""What a model on disk is, read without torch: parameter count, dtype, architecture.

The count is exact: summed from the tensor shapes in the safetensors headers
(8-byte length + JSON, no weights read), or computed from config.json for the
Llama/Qwen/Mistral family when no weights are present.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass
class ModelInfo:
    path: Path
    architecture: str
    parameters: int | None
    weight_bytes: int | None
    hidden_size: int | None
    num_layers: int | None
    source: str  # "safetensors" or "config.json"


def read_safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path}: safetensors header of {length} bytes is not plausible")
        return json.loads(handle.read(length))


def _from_safetensors(model_dir: Path) -> tuple[int, int] | None:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    params = size = 0
    for file in files:
        for name, tensor in read_safetensors_header(file).items():
            if name == "__metadata__":
                continue
            count = math.prod(tensor["shape"])
            params += count
            size += count * DTYPE_BYTES.get(tensor["dtype"], 2)
    return params, size


def count_from_config(config: dict[str, Any]) -> int | None:
    """Parameters of a decoder-only Llama-style model (Llama, Qwen2, Mistral, Gemma-like) from its config."""
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        vocab = int(config["vocab_size"])
        inter = int(config["intermediate_size"])
        heads = int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    q = hidden * heads * head_dim
    kv = 2 * hidden * kv_heads * head_dim
    o = heads * head_dim * hidden
    attn_bias = heads * head_dim + 2 * kv_heads * head_dim if config.get("attention_bias") or config.get("model_type") == "qwen2" else 0
    mlp = 3 * hidden * inter
    norms = 2 * hidden
    per_layer = q + kv + o + attn_bias + mlp + norms
    embed = vocab * hidden
    head = 0 if config.get("tie_word_embeddings") else vocab * hidden
    return embed + layers * per_layer + hidden + head


def read_model_info(model_dir: Path) -> ModelInfo | None:
    """None when the path is not a local model directory (a Hub id, say)."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    architecture = (config.get("architectures") or [config.get("model_type", "?")])[0]
    counted = _from_safetensors(model_dir)
    if counted:
        params, size = counted
        source = "safetensors"
    else:
        params = count_from_config(config)
        size = params * 2 if params else None
        source = "config.json"
    return ModelInfo(
        path=model_dir,
        architecture=str(architecture),
        parameters=params,
        weight_bytes=size,
        hidden_size=config.get("hidden_size"),
        num_layers=config.get("num_hidden_layers"),
        source=source,
    )


def local_model_dir(name: str) -> Path | None:
    """A model as it is on this disk: a directory, or a Hub id already in the Hugging Face cache
    (training downloaded it there); None when neither. Never downloads."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a valid id: the size is simply unknown
        return None

