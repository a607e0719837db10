"""What `serve RUN[:CHECKPOINT] | MODEL` names, resolved without importing an ML library.

A target is a run's checkpoint (an adapter on its base model), a run's base model
(`RUN:base`), a model directory, a GGUF file, an embedded model (`demo`,
`smollm2`) or a Hub id. Engines decide how to load it: an adapter as it is
(vLLM's LoRA, mlx-lm's adapter path) or merged first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synaptic_tui.paths import EMBEDDED_MODELS, resolve_model_name
from synaptic_tui.runs import RunInfo, find_run, load_run, read_run_config, slugify

BASE = "base"
RUN_STAMP = re.compile(r"^\d{8}-\d{6}-")


class TargetError(LookupError):
    """The reference names nothing servable; the message says what was looked for."""


@dataclass
class Target:
    ref: str  # as given
    label: str  # what a person reads: "<run>:checkpoint-4", "smollm2"
    base_model: str  # the base weights: a model directory or a Hub id
    run_dir: Path | None = None
    checkpoint: str | None = None  # checkpoint-N or final; None for a base model
    adapter: Path | None = None  # the checkpoint's adapter directory
    adapter_kind: str | None = None  # peft | mlx
    gguf: Path | None = None  # a GGUF file to serve as it is
    tool_format: str | None = None  # hermes | llama3_json | mistral | json: what the run's template writes
    template: str | None = None  # the run's chat template name (chatml-tools, model, ...)
    added_tokens: list[str] = field(default_factory=list)  # tokens the run added to the vocabulary
    lora_rank: int | None = None

    @property
    def key(self) -> str:
        """What a server serves, for reuse: one checkpoint of one run, or one set of base weights."""
        if self.run_dir is not None and self.checkpoint:
            return f"{self.run_dir.resolve()}:{self.checkpoint}"
        if self.gguf is not None:
            return str(self.gguf.resolve())
        path = Path(self.base_model)
        return str(path.resolve()) if path.exists() else self.base_model

    @property
    def served_name(self) -> str:
        """The model id a server answers to for this target: `sft-demo-model-checkpoint-4`, `smollm2-135m-instruct`."""
        if self.run_dir is not None and self.checkpoint:
            return slugify(f"{RUN_STAMP.sub('', self.run_dir.name)}-{self.checkpoint}", max_len=60)
        if self.gguf is not None:
            return slugify(self.gguf.stem, max_len=60)
        return slugify(Path(self.base_model).name, max_len=60)

    @property
    def portable_ref(self) -> str:
        """The reference resolved once, so a detached process finds the same target from any directory."""
        if self.run_dir is not None:
            return f"{self.run_dir.resolve()}:{self.checkpoint or BASE}"
        if self.gguf is not None:
            return str(self.gguf)
        if self.adapter is not None:
            return str(self.adapter)
        return self.key

    @property
    def is_base(self) -> bool:
        return self.checkpoint is None and self.gguf is None

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "label": self.label, "key": self.key, "base_model": self.base_model,
                "run_dir": str(self.run_dir) if self.run_dir else None, "checkpoint": self.checkpoint,
                "adapter": str(self.adapter) if self.adapter else None, "adapter_kind": self.adapter_kind,
                "gguf": str(self.gguf) if self.gguf else None, "tool_format": self.tool_format,
                "template": self.template}


def _find_run(runs_dir: Path, ref: str) -> RunInfo | None:
    try:
        return find_run(runs_dir, ref)
    except LookupError:
        return None


def resolve_target(ref: str, runs_dir: Path) -> Target:
    """RUN, RUN:CHECKPOINT (checkpoint-N, final, best, base), a model directory, a .gguf, demo/smollm2, a Hub id."""
    ref = ref.strip()
    if not ref:
        raise TargetError("nothing to serve: give RUN[:CHECKPOINT] or a model (path, demo, smollm2, Hub id)")
    run_part, _, checkpoint = ref.rpartition(":")
    if run_part and not Path(ref).exists():
        run = _find_run(runs_dir, run_part)
        if run is not None:
            return run_target(run, checkpoint, ref)
    path = Path(ref).expanduser()
    if ref not in EMBEDDED_MODELS and not path.exists():
        run = _find_run(runs_dir, ref)
        if run is not None:
            return run_target(run, "best", ref)
    return model_target(ref)


def model_target(ref: str) -> Target:
    """A model that is not a run's checkpoint: a directory, a GGUF file, an embedded model, a Hub id."""
    name = resolve_model_name(ref)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TargetError(f"no GGUF file {path}")
        return Target(ref, path.name, str(path.parent), gguf=path.resolve())
    if path.is_dir() and (path / "adapter_config.json").is_file():
        # A checkpoint directory given by path: its run is two levels up (runs/<id>/checkpoints/<name>).
        for run_dir in (path.parent.parent, path.parent):
            run = load_run(run_dir)
            if run is not None and (run_dir / "run.yaml").is_file():
                return run_target(run, path.name, ref)
        base = _adapter_base(path)
        if not base:
            raise TargetError(f"{path} is an adapter without its base model (adapter_config.json has no "
                              "base_model_name_or_path)")
        return Target(ref, path.name, base, checkpoint=path.name, adapter=path.resolve(),
                      adapter_kind="peft", lora_rank=_adapter_rank(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TargetError(f"{path} is not a model directory (no config.json)")
        return Target(ref, ref if ref in EMBEDDED_MODELS else path.name, str(path.resolve()))
    if ref in EMBEDDED_MODELS:
        raise TargetError(f"the {ref} model is not built yet: synaptic-tui demo-model"
                          + (" --real" if ref == "smollm2" else ""))
    if "/" in ref and not ref.startswith((".", "/", "~")):
        return Target(ref, ref, ref)  # a Hub id: the engine downloads it (when online)
    raise TargetError(f"{ref!r} is neither a run, a checkpoint, a model directory, a GGUF file nor a Hub id")


def run_target(run: RunInfo, checkpoint: str, ref: str | None = None) -> Target:
    """A run's checkpoint (best, final, checkpoint-N) or its base model (`base`)."""
    from synaptic_tui.exporting import ExportError, resolve_checkpoint

    config = read_run_config(run.path) if not run.legacy else {}
    base_model = resolve_model_name(str((config.get("model") or {}).get("name") or run.model or ""))
    if not base_model:
        raise TargetError(f"{run.run_id} does not say which base model it trained")
    short = run.run_id if len(run.run_id) <= 40 else run.run_id[:40]
    if checkpoint == BASE:
        return Target(ref or f"{run.run_id}:{BASE}", f"{short}:base", base_model, run_dir=run.path)
    try:
        name = resolve_checkpoint(run, checkpoint or "best")
    except ExportError as exc:
        raise TargetError(str(exc)) from None
    adapter = next(c.path for c in run.checkpoints() if c.name == name)
    template = run.status.extra.get("chat_template") if run.status else None
    template = template if isinstance(template, dict) else {}
    mlx = (run.platform == "mlx" or str(config.get("platform")) == "mlx"
           or (adapter / "adapters.safetensors").is_file())
    return Target(ref or f"{run.run_id}:{name}", f"{short}:{name}", base_model, run_dir=run.path, checkpoint=name,
                  adapter=adapter, adapter_kind="mlx" if mlx else "peft",
                  tool_format=template.get("tool_format") or _template_tool_format(adapter),
                  template=template.get("name"), added_tokens=list(template.get("added_tokens") or []),
                  lora_rank=_adapter_rank(adapter))


def _adapter_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _adapter_base(path: Path) -> str | None:
    return _adapter_config(path).get("base_model_name_or_path")


def _adapter_rank(path: Path) -> int | None:
    config = _adapter_config(path)
    rank = config.get("r") or (config.get("lora_parameters") or {}).get("rank")  # PEFT, mlx-lm
    return int(rank) if isinstance(rank, (int, float)) else None


def _template_tool_format(checkpoint: Path) -> str | None:
    """The tool-call format of the template saved with a checkpoint, for runs older than status.chat_template."""
    try:
        from trainers.chat_templates import builtin_for
    except ImportError:  # an install without the trainers package
        return None
    try:
        text = (Path(checkpoint) / "chat_template.jinja").read_text(encoding="utf-8")
    except OSError:
        return None
    builtin = builtin_for(text)
    return builtin.tool_format if builtin else None
