"""The training config: a pydantic schema loaded from YAML, with `--set key=value` overrides.

Precedence is `--set` > YAML > defaults. Every error names the file, the line
(where the YAML can tell) and the dotted field, e.g.
`config.yaml:12 training.learning_rate: must be > 0`. Relative paths in a YAML
file are relative to that file's directory; relative paths given with `--set`
are relative to the current directory. The original Synaptic Tuner's key names
(`model.model_name`, `lora.lora_alpha`, `dataset.local_file`, ...) load too.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import yaml
from pydantic import (AliasChoices, AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError,
                      field_validator, model_validator)


EXPORT_FORMATS = ("lora", "merged-16bit", "merged-4bit", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m")
# Sections of the original tuner's YAML that we accept and ignore (reported, never an error).
LEGACY_SECTIONS = ("logging", "wandb", "evaluation", "hub")
REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def _finite_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a number (got {str(value).lower()})")
    try:
        number = float(value) if isinstance(value, (str, int, float)) else None
    except (ValueError, OverflowError):
        number = None  # not a number at all: pydantic says so
    if number is not None and not math.isfinite(number):
        # Before the range checks, which would call nan "not > 0".
        raise ValueError(f"must be a finite number (got {value!r})")
    return value


# Whole numbers only: `max_steps: true` is not 1 and `save_steps: 2.5` is not 2.
Int = Annotated[int, Strict()]
# Finite numbers only, never a bool: `.inf`, `nan` and `true` are not learning rates.
Float = Annotated[float, BeforeValidator(_finite_number), AllowInfNan(False)]
FLOAT32_MAX = 3.4028234663852886e38


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


def _alias(*names: str) -> Any:
    return AliasChoices(*names)


class ModelSection(Section):
    name: str = Field("demo", validation_alias=_alias("name", "model_name"))
    max_seq_length: Int = Field(1024, gt=0, validation_alias=_alias("max_seq_length", "max_length"))
    # None: as the engine prefers it (Unsloth loads 4-bit, plain transformers full precision).
    load_in_4bit: bool | None = None
    dtype: str | None = None
    trust_remote_code: bool = False
    # auto: the model's own template when it renders tool calls, else the built-in of the model's family;
    # model: the model's own, unchanged; a built-in's name; or a path to a Jinja file.
    chat_template: str = "auto"

    @field_validator("chat_template")
    @classmethod
    def _template(cls, value: str) -> str:
        from trainers.chat_templates import SETTINGS

        if value in SETTINGS:
            return value
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"{value!r} is neither a built-in nor a Jinja file; expected one of: "
                             f"{', '.join(SETTINGS)}, or the path to a template file")
        return str(path)


class DatasetSection(Section):
    path: str | None = Field(None, validation_alias=_alias("path", "local_file"))
    hub_name: str | None = Field(None, validation_alias=_alias("hub_name", "dataset_name"))
    use_local_file: bool = True
    format: Literal["auto", "messages", "sharegpt", "kto"] = "auto"
    test_size: Float = Field(0.0, ge=0, lt=1)
    max_rows: Int | None = Field(None, gt=0)
    split: str = "train"


class LoraSection(Section):
    r: Int = Field(16, gt=0)
    alpha: Int = Field(32, gt=0, validation_alias=_alias("alpha", "lora_alpha"))
    dropout: Float = Field(0.0, ge=0, lt=1, validation_alias=_alias("dropout", "lora_dropout"))
    target_modules: str | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = False
    use_rslora: bool = False
    # MLX only: lora, dora (also via use_dora) or full (every weight trained, no adapter).
    fine_tune_type: Literal["lora", "dora", "full"] | None = None
    num_layers: Int = -1
    random_state: Int | None = None
    use_gradient_checkpointing: bool | Literal["unsloth"] | None = None

    @field_validator("num_layers")
    @classmethod
    def _layers(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError("must be -1 (all layers) or > 0")
        return value


class TrainingSection(Section):
    learning_rate: Float = Field(2e-4, gt=0)
    num_train_epochs: Float = Field(1.0, gt=0, validation_alias=_alias("num_train_epochs", "epochs"))
    max_steps: Int = -1
    per_device_train_batch_size: Int = Field(2, gt=0, validation_alias=_alias("per_device_train_batch_size", "batch_size"))
    per_device_eval_batch_size: Int = Field(2, gt=0)
    gradient_accumulation_steps: Int = Field(1, gt=0)
    warmup_ratio: Float = Field(0.0, ge=0, lt=1)
    warmup_steps: Int = Field(0, ge=0)
    lr_scheduler_type: str = "linear"
    weight_decay: Float = Field(0.0, ge=0)
    max_grad_norm: Float = Field(1.0, gt=0)
    optim: str = "adamw_torch"
    logging_steps: Int = Field(1, gt=0)
    save_steps: Int = Field(50, gt=0)
    eval_steps: Int | None = Field(None, gt=0)
    save_total_limit: Int | None = Field(3, gt=0)
    seed: Int = 42
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    completion_only_loss: bool = True
    # End the run `failed` when the loss or gradient norm stops being finite, or the gradient norm stays 0
    # for unhealthy_steps logged steps in a row (nothing is being learned), instead of burning GPU hours.
    stop_on_unhealthy: bool = True
    unhealthy_steps: Int = Field(3, gt=0)
    num_processes: Int = Field(1, gt=0)
    output_dir: str | None = None
    beta: Float = Field(0.1, gt=0)
    desirable_weight: Float = Field(1.0, gt=0)
    undesirable_weight: Float = Field(1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _fp16_bf16(cls, data: Any) -> Any:
        # The original tuner's (and TrainingArguments') precision switches: fp16/bf16 true -> precision.
        if isinstance(data, dict) and ("fp16" in data or "bf16" in data):
            data = dict(data)
            flags = {key: data.pop(key) for key in ("fp16", "bf16") if key in data}
            for key, value in flags.items():
                if not isinstance(value, bool):
                    raise CrossFieldError(f"training.{key}", f"must be true or false (got {value!r})")
            on = [key for key, value in flags.items() if value]
            if len(on) > 1:
                raise CrossFieldError("training.bf16", "fp16 and bf16 are both true; set one (or precision)")
            if "precision" not in data:
                data["precision"] = on[0] if on else "fp32" if len(flags) == 2 else "auto"
        return data

    @field_validator("learning_rate")
    @classmethod
    def _finite_in_training(cls, value: float) -> float:
        # Training runs in 32-bit (or 16-bit) floats: 1e308 is finite here and infinite there.
        if value > FLOAT32_MAX:
            raise ValueError(f"must be a finite number ({value:g} is infinite as a 32-bit float)")
        return value

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError("must be -1 (use epochs) or > 0")
        return value


class OutputSection(Section):
    runs_dir: str | None = None
    run_name: str | None = None


class ExportSection(Section):
    formats: list[Literal[EXPORT_FORMATS]] = ["lora"]  # type: ignore[valid-type]
    checkpoint: str = "best"
    repo_id: str | None = None
    private: bool = True

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, value: str) -> str:
        return checkpoint_name(value)

    @field_validator("repo_id")
    @classmethod
    def _repo(cls, value: str | None) -> str | None:
        return value if value is None else repo_id(value)


def checkpoint_name(value: str) -> str:
    if value not in ("best", "final") and not re.fullmatch(r"checkpoint-\d+", value):
        raise ValueError(f"must be best, final or checkpoint-N (got {value!r})")
    return value


def repo_id(value: str) -> str:
    parts = value.split("/")
    if len(parts) != 2 or not all(REPO_PART.match(p) and "--" not in p and ".." not in p for p in parts):
        raise ValueError(f"must look like owner/name (got {value!r})")
    return value


def stored_url(value: str | None) -> str | None:
    """A server URL as a config may hold it: credentials only as ${VAR} references (configs are stored)."""
    from synaptic_tui.redact import literal_credentials, redact_url

    if value is not None and literal_credentials(value):
        raise ValueError(f"holds a credential ({redact_url(value)}); a config is stored with the run, so "
                         "write it as an environment variable, e.g. http://user:${EVAL_TOKEN}@host/v1")
    return value


class EvalSection(Section):
    backend: Literal["ollama", "openai", "local"] = "ollama"
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return stored_url(value)
    model: str | None = None
    prompt_set: str | None = None
    concurrency: Int = Field(4, gt=0)
    temperature: Float = Field(0.0, ge=0)
    tags: list[str] = []
    limit: Int | None = Field(None, gt=0)


class SelectStage(Section):
    checkpoint: str = "best"

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, value: str) -> str:
        return checkpoint_name(value)


class ExportStage(Section):
    formats: list[Literal[EXPORT_FORMATS]] = ["merged-16bit"]  # type: ignore[valid-type]


class UploadStage(Section):
    repo_id: str
    private: bool = True

    @field_validator("repo_id")
    @classmethod
    def _repo(cls, value: str) -> str:
        return repo_id(value)


class EvalStage(Section):
    backend: Literal["ollama", "openai", "local"] = "local"
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return stored_url(value)
    model: str | None = None
    prompt_set: str | None = None
    concurrency: Int = Field(4, gt=0)
    temperature: Float = Field(0.0, ge=0)
    max_tokens: Int = Field(256, gt=0)
    tags: list[str] = []
    limit: Int | None = Field(None, gt=0)
    baseline: bool = False  # also evaluate the base model, and compare


class PipelineSection(Section):
    """Stages run in this order; each is optional. sft/kto hold overrides of the config around them."""

    sft: dict[str, Any] | None = None
    kto: dict[str, Any] | None = None
    select: SelectStage | None = None
    export: ExportStage | None = None
    upload: UploadStage | None = None
    eval: EvalStage | None = None

    def stages(self) -> list[str]:
        return [name for name in PIPELINE_STAGES if getattr(self, name) is not None]


PIPELINE_STAGES = ("sft", "kto", "select", "export", "upload", "eval")


class TrainingConfig(Section):
    method: Literal["sft", "kto"] = "sft"
    platform: Literal["auto", "cuda", "mlx", "cpu"] = "auto"
    engine: Literal["auto", "unsloth", "transformers"] = "auto"
    model: ModelSection = ModelSection()
    dataset: DatasetSection = DatasetSection()
    lora: LoraSection = LoraSection()
    training: TrainingSection = TrainingSection()
    output: OutputSection = OutputSection()
    export: ExportSection = ExportSection()
    eval: EvalSection = EvalSection()
    pipeline: PipelineSection | None = None
    legacy_ignored: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _legacy_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            ignored = [key for key in LEGACY_SECTIONS if key in data]
            if ignored:
                data = {k: v for k, v in data.items() if k not in LEGACY_SECTIONS}
                data["legacy_ignored"] = ignored
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainingConfig:
        if self.method == "kto" and self.training.per_device_train_batch_size < 2:
            raise CrossFieldError("training.per_device_train_batch_size",
                                  "KTO needs at least 2 rows per batch to estimate KL")
        if self.training.warmup_ratio and self.training.warmup_steps:
            raise CrossFieldError("training.warmup_steps", "set warmup_ratio or warmup_steps, not both")
        if self.method == "kto" and self.platform == "mlx":
            raise CrossFieldError("platform", "mlx-lm has no KTO trainer; use platform cuda or cpu")
        if self.pipeline is not None:
            _check_pipeline(self)
        return self


def stage_config(config: TrainingConfig, stage: str, model: str | None = None) -> dict[str, Any]:
    """The training config of a pipeline's sft or kto stage: the config around it, its overrides, its method."""
    data = config.model_dump(mode="json", exclude={"pipeline", "legacy_ignored"})
    overrides = dict(getattr(config.pipeline, stage) or {})
    start_from = overrides.pop("start_from", None)
    _deep_merge(data, overrides)
    data["method"] = stage
    if model is not None:
        data["model"]["name"] = model
    elif start_from not in (None, "sft"):
        data["model"]["name"] = start_from
    return data


def _deep_merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _check_pipeline(config: TrainingConfig) -> None:
    """Everything a pipeline needs, checked before any stage runs."""
    pipeline = config.pipeline
    stages = pipeline.stages()
    if not stages:
        raise CrossFieldError("pipeline", f"has no stages; use some of: {', '.join(PIPELINE_STAGES)}")
    for stage in ("sft", "kto"):
        overrides = getattr(pipeline, stage)
        if overrides is None:
            continue
        start_from = overrides.get("start_from")
        if stage == "kto" and start_from == "sft" and pipeline.sft is None:
            raise CrossFieldError("pipeline.kto.start_from", "is sft but the pipeline has no sft stage")
        if stage == "sft" and start_from is not None:
            raise CrossFieldError("pipeline.sft.start_from", "only the kto stage takes start_from")
        try:
            TrainingConfig.model_validate(stage_config(config, stage))
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = _clean_loc(error["loc"])
            inner = (error.get("ctx") or {}).get("error")
            if isinstance(inner, CrossFieldError):
                loc = tuple(inner.field.split("."))
            raise CrossFieldError(".".join(("pipeline", stage, *loc)), _message(error, loc)) from None
    trains = pipeline.sft is not None or pipeline.kto is not None
    for stage in ("select", "export", "upload"):
        if getattr(pipeline, stage) is not None and not trains:
            raise CrossFieldError(f"pipeline.{stage}", "needs an sft or kto stage before it")
    if pipeline.upload is not None and pipeline.export is None:
        raise CrossFieldError("pipeline.upload", "uploads what the export stage writes: add pipeline.export")
    if pipeline.eval is not None:
        ev = pipeline.eval
        if not (ev.prompt_set or config.eval.prompt_set):
            raise CrossFieldError("pipeline.eval.prompt_set", "is required (or set eval.prompt_set)")
        servable = {"merged-16bit"} | {f for f in EXPORT_FORMATS if f.startswith("gguf-")}
        if ev.backend == "local" and trains and (pipeline.export is None or not servable & set(pipeline.export.formats)):
            raise CrossFieldError("pipeline.eval.backend", "local serves the merged-16bit export with mlx_lm.server "
                                  "or a GGUF export with llama-cpp-python's server: add merged-16bit or a gguf "
                                  "format to pipeline.export.formats")
        if ev.backend != "local" and not (ev.model or config.eval.model):
            raise CrossFieldError("pipeline.eval.model", f"is required with backend {ev.backend} "
                                  "(the name the server knows the fine-tune by)")


class CrossFieldError(ValueError):
    """A rule between fields; carries the field it should be reported against."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class ConfigProblem:
    source: str
    line: int | None
    field: str
    message: str
    value: str | None = None  # for --set: the text after '='

    def __str__(self) -> str:
        if self.source == "--set":
            target = f"--set {self.field}={self.value}" if self.value is not None else f"--set {self.field}"
            return f"{target}: {self.message}"
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where} {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# --- YAML with line numbers ---------------------------------------------------------


def _line_map(node: yaml.Node, path: tuple[str, ...] = (), lines: dict | None = None) -> dict[tuple[str, ...], int]:
    """{("training", "learning_rate"): 12, ...}: the 1-based line of every key and list item."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = (*path, str(key_node.value))
            lines[key_path] = key_node.start_mark.line + 1
            _line_map(value_node, key_path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            item_path = (*path, str(index))
            lines[item_path] = item.start_mark.line + 1
            _line_map(item, item_path, lines)
    return lines


def _duplicate_keys(node: yaml.Node, shown: str, path: tuple[str, ...] = ()) -> list[ConfigProblem]:
    """Keys given twice in one mapping: YAML keeps the last silently, which hides a typo'd edit."""
    problems: list[ConfigProblem] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first and key != "<<":
                problems.append(ConfigProblem(shown, line, ".".join((*path, key)),
                                              f"given twice (first on line {first[key]}); keep one"))
            first.setdefault(key, line)
            problems += _duplicate_keys(value_node, shown, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, shown, (*path, str(index)))
    return problems


def _read_yaml(path: Path, shown: str) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(shown, None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(shown, None, "", f"cannot read: {exc}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem(shown, mark.line + 1 if mark else None, "", f"YAML syntax: {problem}")]) from None
    if data is None:
        return {}, {}
    duplicates = _duplicate_keys(node, shown)
    if duplicates:
        raise ConfigError(duplicates)
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(shown, 1, "", "the top level must be a mapping of sections (method:, model:, ...)")])
    return data, _line_map(node)


# --- overrides -----------------------------------------------------------------------


def _parse_override(text: str) -> tuple[list[str], Any, str]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([ConfigProblem("--set", None, text, "expected KEY=VALUE, e.g. training.learning_rate=1e-4")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value, raw


def _merge(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


# --- pydantic errors -> one line each ---------------------------------------------------


def _model_for(loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = TrainingConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            field = next((f for f in model.model_fields.values()
                          if isinstance(f.validation_alias, AliasChoices) and part in f.validation_alias.choices), None)
        annotation = getattr(field, "annotation", None)
        # `PipelineSection | None` and the like: the section's model is the non-None member.
        members = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        annotation = members[0] if len(members) == 1 else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def _known_keys(model: type[BaseModel]) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if name == "legacy_ignored":
            continue
        keys.append(name)
        if isinstance(field.validation_alias, AliasChoices):
            keys += [a for a in field.validation_alias.choices if isinstance(a, str) and a != name]
    return keys


def _num(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _message(error: dict[str, Any], loc: tuple[str, ...]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    if kind == "greater_than":
        return f"must be > {_num(ctx['gt'])}"
    if kind == "greater_than_equal":
        return f"must be >= {_num(ctx['ge'])}"
    if kind == "less_than":
        return f"must be < {_num(ctx['lt'])}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        return f"must be one of: {', '.join(choices)} (got {got!r})"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be an integer (got {got!r})"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number (got {got!r})"
    if kind == "finite_number":
        return f"must be a finite number (got {got!r})"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false (got {got!r})"
    if kind in ("string_type",):
        return f"must be text (got {got!r})"
    if kind in ("list_type",):
        return f"must be a list (got {got!r})"
    if kind == "missing":
        return "is required"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping (got {got!r})"
    if kind == "extra_forbidden":
        model = _model_for(loc[:-1])
        keys = _known_keys(model) if model else []
        # pydantic takes the first of a field's names it finds and calls the others unknown.
        same = next((name for name, f in (model.model_fields.items() if model else ())
                     if isinstance(f.validation_alias, AliasChoices) and loc[-1] in f.validation_alias.choices), None)
        if same is not None:
            names = " / ".join(str(a) for a in model.model_fields[same].validation_alias.choices)
            return f"the same setting as {'.'.join((*loc[:-1], same))} ({names}): give only one"
        close = difflib.get_close_matches(loc[-1], keys, n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean '{close[0]}'?"
        return f"unknown key; expected one of: {', '.join(keys)}"
    if kind == "value_error":
        exc = ctx.get("error")
        return str(exc) if exc is not None else error["msg"].removeprefix("Value error, ")
    return error["msg"][:1].lower() + error["msg"][1:]


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str, ...]:
    # pydantic adds union/literal branch tags to loc ('str', 'list[str]', 'literal[...]'): drop them.
    return tuple(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "bool", "float"))))


def _problems(exc: ValidationError, source_of: dict[tuple[str, ...], tuple[str, int | None, str | None]],
              default_source: str) -> list[ConfigProblem]:
    problems = []
    seen = set()
    for error in exc.errors():
        loc = _clean_loc(error["loc"])
        exc_obj = (error.get("ctx") or {}).get("error")
        if isinstance(exc_obj, CrossFieldError):
            loc = tuple(exc_obj.field.split("."))
        field = ".".join(loc)
        if field in seen:
            continue
        seen.add(field)
        source, line, raw = default_source, None, None
        for depth in range(len(loc), 0, -1):  # the closest key the YAML or --set told us about
            if loc[:depth] in source_of:
                source, line, raw = source_of[loc[:depth]]
                break
        else:  # an unknown section given only through deeper keys (--set trainig.x=1)
            deeper = next((key for key in source_of if key[:len(loc)] == loc), None)
            if deeper is not None:
                source, line, raw = source_of[deeper]
                if source == "--set":
                    field = ".".join(deeper)
        problems.append(ConfigProblem(source, line, field, _message(error, loc), raw))
    return sorted(problems, key=lambda p: (p.source == "--set", p.line or 0))


# --- loading -------------------------------------------------------------------------------


PATH_FIELDS = (("dataset", "path"), ("eval", "prompt_set"), ("output", "runs_dir"))
# Legacy names of those fields, resolved the same way.
PATH_ALIASES = {("dataset", "path"): ("path", "local_file")}


def _absolute(path: Path) -> str:
    """The path made absolute, its symlinks resolved where they resolve (a symlink loop is left for the
    check that reads the file to report, rather than crashing here)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return os.path.abspath(path)


def resolve_paths(data: dict[str, Any], base_dir: Path, only: set[tuple[str, str]] | None = None) -> None:
    """Make relative paths absolute against base_dir (the YAML file's directory, or the cwd for --set)."""
    for section, field in PATH_FIELDS:
        if only is not None and (section, field) not in only:
            continue
        if not isinstance(data.get(section), dict):
            continue
        for key in PATH_ALIASES.get((section, field), (field,)):
            value = data[section].get(key)
            if isinstance(value, str) and value:
                data[section][key] = _absolute(base_dir / Path(value).expanduser())
    pipeline = data.get("pipeline")
    if isinstance(pipeline, dict) and only is None:
        for stage in ("sft", "kto"):
            if isinstance(pipeline.get(stage), dict):
                resolve_paths(pipeline[stage], base_dir)
                start = pipeline[stage].get("start_from")
                if isinstance(start, str) and start != "sft" and (start.startswith((".", "~")) or (base_dir / start).is_dir()):
                    pipeline[stage]["start_from"] = _absolute(base_dir / Path(start).expanduser())
        if isinstance(pipeline.get("eval"), dict) and isinstance(pipeline["eval"].get("prompt_set"), str):
            pipeline["eval"]["prompt_set"] = _absolute(base_dir / Path(pipeline["eval"]["prompt_set"]).expanduser())
    model = data.get("model")
    template = model.get("chat_template") if isinstance(model, dict) else None
    if isinstance(template, str) and (only is None or ("model", "chat_template") in only):
        from trainers.chat_templates import SETTINGS

        if template not in SETTINGS:
            model["chat_template"] = str((base_dir / Path(template).expanduser()).resolve())
    if isinstance(model, dict) and (only is None or ("model", "name") in only):
        for key in ("name", "model_name"):
            value = model.get(key)
            if isinstance(value, str) and value.startswith((".", "~")) or (
                    isinstance(value, str) and not Path(value).is_absolute() and (base_dir / value).is_dir()):
                model[key] = _absolute(base_dir / Path(value).expanduser())


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), base: dict | None = None) -> TrainingConfig:
    data: dict[str, Any] = dict(base or {})
    source_of: dict[tuple[str, ...], tuple[str, int | None, str | None]] = {}
    shown = str(path) if path is not None else "defaults"
    if path is not None:
        file_data, lines = _read_yaml(Path(path), shown)
        resolve_paths(file_data, Path(path).resolve().parent)
        data.update(file_data)
        source_of.update({key: (shown, line, None) for key, line in lines.items()})
    parsed = [_parse_override(text) for text in overrides]
    for keys, value, raw in parsed:
        _merge(data, keys, value)
        source_of[tuple(keys)] = ("--set", None, raw)
        if len(keys) == 2 and (keys[0], keys[1]) in {*PATH_FIELDS, ("model", "name"), ("model", "chat_template")}:
            resolve_paths(data, Path.cwd(), only={(keys[0], keys[1])})
    try:
        return TrainingConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, source_of, shown)) from None


def default_config() -> TrainingConfig:
    """The embedded default: the shipped SFT example (the demo model on the sample tool-calling data)."""
    from synaptic_tui.paths import shipped_dir

    return load_config(shipped_dir("examples") / "configs" / "sft.yaml")


def config_to_dict(config: TrainingConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    if not data.get("legacy_ignored"):
        data.pop("legacy_ignored", None)
    if data.get("pipeline") is None:
        data.pop("pipeline", None)
    return data


def dump_yaml(config: TrainingConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
