"""Config loading: precedence, every error path (one line naming file:line and field), legacy layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXAMPLES

from synaptic_tui.config import ConfigError, config_to_dict, default_config, dump_yaml, load_config


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_lines(path, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    return str(err.value).splitlines()


def test_defaults():
    config = load_config(None)
    assert (config.method, config.platform, config.engine, config.model.name) == ("sft", "auto", "auto", "demo")
    assert config.training.learning_rate == 2e-4 and config.lora.r == 16 and config.lora.target_modules == "all-linear"


def test_default_config_points_at_the_shipped_sample_data():
    config = default_config()
    assert Path(config.dataset.path) == EXAMPLES / "data" / "sft_tool_calls.jsonl"
    assert Path(config.dataset.path).exists() and Path(config.eval.prompt_set).exists()


def test_yaml_overrides_defaults_and_set_overrides_yaml(tmp_path):
    path = write(tmp_path, "method: kto\ntraining:\n  learning_rate: 0.0003\n  per_device_train_batch_size: 4\n")
    config = load_config(path)
    assert config.method == "kto" and config.training.learning_rate == 3e-4
    assert config.training.save_steps == 50  # untouched default
    config = load_config(path, ["training.learning_rate=1e-5", "lora.target_modules=[q_proj, v_proj]",
                                "training.gradient_checkpointing=true", "export.formats=[lora, gguf-q8_0]"])
    assert config.training.learning_rate == 1e-5
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.training.gradient_checkpointing is True
    assert config.export.formats == ["lora", "gguf-q8_0"]
    assert config.training.per_device_train_batch_size == 4  # from the YAML, not overridden


@pytest.mark.parametrize(("text", "expected"), [
    ("training:\n  save_steps: 10\n  learning_rate: -1\n", "config.yaml:3 training.learning_rate: must be > 0"),
    ("dataset:\n  test_size: 1.5\n", "config.yaml:2 dataset.test_size: must be < 1"),
    ("method: dpo\n", "config.yaml:1 method: must be one of: sft, kto (got 'dpo')"),
    ("training:\n  per_device_train_batch_size: lots\n",
     "config.yaml:2 training.per_device_train_batch_size: must be an integer (got 'lots')"),
    ("training:\n  learning_rat: 0.1\n", "config.yaml:2 training.learning_rat: unknown key; did you mean 'learning_rate'?"),
    ("modle:\n  name: x\n", "config.yaml:1 modle: unknown key; did you mean 'model'?"),
    ("lora: 5\n", "config.yaml:1 lora: must be a mapping (got 5)"),
    ("training:\n  max_steps: 0\n", "config.yaml:2 training.max_steps: must be -1 (use epochs) or > 0"),
    ("export:\n  checkpoint: latest\n", "config.yaml:2 export.checkpoint: must be best, final or checkpoint-N (got 'latest')"),
    ("export:\n  repo_id: not a repo\n", "config.yaml:2 export.repo_id: must look like owner/name (got 'not a repo')"),
    ("export:\n  formats:\n    - lora\n    - gguf-q2\n",
     "config.yaml:4 export.formats.1: must be one of: lora, merged-16bit, merged-4bit, gguf-f16, gguf-q8_0, gguf-q4_k_m (got 'gguf-q2')"),
    ("method: kto\ntraining:\n  per_device_train_batch_size: 1\n",
     "config.yaml:3 training.per_device_train_batch_size: KTO needs at least 2 rows per batch to estimate KL"),
    ("method: kto\nplatform: mlx\ntraining:\n  per_device_train_batch_size: 2\n",
     "config.yaml:2 platform: mlx-lm has no KTO trainer; use platform cuda or cpu"),
    ("training:\n  warmup_ratio: 0.1\n  warmup_steps: 5\n",
     "config.yaml:3 training.warmup_steps: set warmup_ratio or warmup_steps, not both"),
    ("training:\n  warmup_ratio: -0.1\n", "config.yaml:2 training.warmup_ratio: must be >= 0"),
    ("training:\n  learning_rate: abc\n", "config.yaml:2 training.learning_rate: must be a number (got 'abc')"),
    ("training:\n  gradient_checkpointing: maybe\n",
     "config.yaml:2 training.gradient_checkpointing: must be true or false (got 'maybe')"),
    ("model:\n  name: [1, 2]\n", "config.yaml:2 model.name: must be text (got [1, 2])"),
    ("export:\n  formats: lora\n", "config.yaml:2 export.formats: must be a list (got 'lora')"),
    ("lora:\n  num_layers: 0\n", "config.yaml:2 lora.num_layers: must be -1 (all layers) or > 0"),
    # A setting given under two of its names (the original tuner's and ours).
    ("model:\n  name: a\n  model_name: b\n",
     "config.yaml:3 model.model_name: the same setting as model.name (name / model_name): give only one"),
    ("training:\n  fp16: true\n  bf16: true\n",
     "config.yaml:3 training.bf16: fp16 and bf16 are both true; set one (or precision)"),
    ("training:\n  bf16: yes please\n", "config.yaml:2 training.bf16: must be true or false (got 'yes please')"),
])
def test_each_bad_value_is_one_line_with_file_line_and_field(tmp_path, monkeypatch, text, expected):
    monkeypatch.chdir(tmp_path)
    assert error_lines(Path("config.yaml") if write(tmp_path, text) else None) == [expected]


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_bytes(b"\xff\xfe\x00 not text")
    [line] = error_lines(Path("config.yaml"))
    assert line.startswith("config.yaml: cannot read: ") and "decode" in line


@pytest.mark.parametrize(("flags", "precision"), [("fp16: true", "fp16"), ("bf16: true\n  fp16: false", "bf16"),
                                                  ("fp16: false\n  bf16: false", "fp32"), ("fp16: false", "auto")])
def test_the_original_fp16_bf16_switches_set_the_precision(tmp_path, flags, precision):
    assert load_config(write(tmp_path, f"training:\n  {flags}\n")).training.precision == precision


def test_unknown_key_without_a_close_match_lists_the_valid_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "lora:\n  zzz: 1\n")
    [line] = error_lines(Path("config.yaml"))
    assert line.startswith("config.yaml:2 lora.zzz: unknown key; expected one of: r, alpha, lora_alpha, dropout")


def test_all_problems_are_reported_in_line_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "lora:\n  r: 0\ntraining:\n  learning_rate: -2\nmethod: nope\n")
    assert error_lines(Path("config.yaml")) == [
        "config.yaml:2 lora.r: must be > 0",
        "config.yaml:4 training.learning_rate: must be > 0",
        "config.yaml:5 method: must be one of: sft, kto (got 'nope')",
    ]


def test_override_errors_name_the_override(tmp_path):
    assert error_lines(None, ["training.learning_rate=-1"]) == ["--set training.learning_rate=-1: must be > 0"]
    assert error_lines(None, ["trainig.learning_rate=1"]) == [
        "--set trainig.learning_rate=1: unknown key; did you mean 'training'?"]
    assert error_lines(None, ["training.learning_rate"]) == [
        "--set training.learning_rate: expected KEY=VALUE, e.g. training.learning_rate=1e-4"]
    assert error_lines(None, ["=3"])[0].startswith("--set =3: expected KEY=VALUE")


def test_yaml_syntax_error_names_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "method: sft\ntraining:\n  learning_rate: [1, 2\n  save_steps: 3\n")
    [line] = error_lines(Path("config.yaml"))
    assert line.startswith("config.yaml:4: YAML syntax:")


def test_missing_file_and_wrong_top_level(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert error_lines(Path("absent.yaml")) == ["absent.yaml: file not found"]
    write(tmp_path, "- just\n- a list\n", "list.yaml")
    assert error_lines(Path("list.yaml")) == [
        "list.yaml:1: the top level must be a mapping of sections (method:, model:, ...)"]


def test_empty_file_is_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == load_config(None)


def test_original_synaptic_tuner_layout_loads():
    config = load_config(EXAMPLES / "configs" / "legacy_rtx3090.yaml")
    assert config.model.name == "demo" and config.model.dtype is None
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (16, 32, 0.0)
    assert config.lora.use_gradient_checkpointing == "unsloth" and config.lora.random_state == 3407
    assert config.training.per_device_train_batch_size == 2 and config.training.gradient_accumulation_steps == 2
    assert Path(config.dataset.path) == EXAMPLES / "data" / "sft_tool_calls.jsonl"
    assert config.dataset.hub_name == "local" and config.training.output_dir == "./sft_output_rtx3090"
    assert config.legacy_ignored == ["wandb"]
    dumped = config_to_dict(config)
    assert dumped["lora"]["alpha"] == 32 and "lora_alpha" not in dumped["lora"]


def test_relative_paths_follow_the_file_or_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    path = write(tmp_path / "configs", "dataset:\n  path: ../data/train.jsonl\neval:\n  prompt_set: prompts.json\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(path)
    assert config.dataset.path == str(tmp_path / "data" / "train.jsonl")
    assert config.eval.prompt_set == str(tmp_path / "configs" / "prompts.json")
    config = load_config(path, ["dataset.path=other.jsonl"])
    assert config.dataset.path == str(tmp_path / "other.jsonl")


def test_dump_round_trips(tmp_path):
    config = load_config(EXAMPLES / "configs" / "kto.yaml", ["training.learning_rate=3e-5"])
    again = load_config(write(tmp_path, dump_yaml(config), "dumped.yaml"))
    assert again == config
