"""Pre-flight: everything that can be checked before a run is launched, without loading the model.

Errors stop the launch; warnings need `--yes` (or a confirm in the TUI). The
parameter count is exact (modelinfo), the dataset is checked row by row with
the trainers' own code, token lengths come from the real tokenizer and chat
template in a subprocess (the app never imports transformers).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synaptic_tui.modelinfo import ModelInfo, read_model_info
from trainers.data import DatasetError, check_rows

GB = 1024**3
# Learning-rate ranges that are sane for a LoRA adapter, per method.
LR_RANGES = {"sft": (1e-6, 1e-3), "kto": (5e-6, 5e-4)}
LINEAR_PER_LAYER = 7  # q, k, v, o, gate, up, down in Llama-style blocks


@dataclass
class Finding:
    level: str  # error | warning | info
    topic: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:<7} {self.topic:<9} {self.message}"


@dataclass
class PreflightReport:
    findings: list[Finding] = field(default_factory=list)
    parameters: int | None = None
    trainable_parameters: int | None = None
    memory_needed_gb: float | None = None
    memory_available_gb: float | None = None
    memory_kind: str | None = None  # "GPU" or "RAM"
    rows: int | None = None
    token_stats: dict[str, Any] | None = None
    chat_template: dict[str, Any] | None = None  # what trainers.chat_templates chose, and why

    def add(self, level: str, topic: str, message: str) -> None:
        self.findings.append(Finding(level, topic, message))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = not self.errors
        return data

    def format(self) -> str:
        lines = []
        if self.parameters:
            kind = "full fine-tune" if self.trainable_parameters == self.parameters else "LoRA"
            trainable = f", {self.trainable_parameters:,} trainable ({kind})" if self.trainable_parameters else ""
            lines.append(f"model     {self.parameters:,} parameters{trainable}")
        if self.memory_needed_gb is not None:
            avail = f" of {self.memory_available_gb:.1f} GB free {self.memory_kind}" if self.memory_available_gb else ""
            lines.append(f"memory    ~{self.memory_needed_gb:.2f} GB needed{avail}")
        if self.chat_template:
            # A substituted template's reason is a finding of its own, below.
            lines.append(f"template  {describe_template(self.chat_template, why=self.chat_template.get('source') == 'model')}")
        if self.token_stats:
            t = self.token_stats
            lines.append(f"tokens    mean {t['mean']:.0f}, p95 {t['p95']}, max {t['max']} per row; "
                         f"{t['over_max']} of {t['rows']} rows over max_seq_length {t['max_length']}")
        lines += [str(f) for f in self.findings]
        return "\n".join(lines)


def free_gpu_memory_gb() -> float | None:
    """Free memory of the emptiest GPU, from nvidia-smi (never torch, in the app process)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:  # its error text carries version numbers that would read as MiB free
        return None
    values = [float(v) for v in out.stdout.split() if v.replace(".", "", 1).isdigit()]
    return max(values) / 1024 if values else None


def available_ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / GB
    except (ValueError, OSError, AttributeError):
        return None


def mlx_layers(lora: dict[str, Any]) -> int | None:
    """How many of the last layers mlx-lm adapts (`lora.num_layers`; -1 or unset: all)."""
    layers = int(lora.get("num_layers", -1) or -1)
    return None if layers == -1 else layers


def lora_parameters(info: ModelInfo, config_json: dict[str, Any], rank: int, layers: int | None = None) -> int | None:
    """LoRA adapter size for all linear layers (of the last `layers`, else all): r * (in + out) per projection."""
    try:
        hidden = int(config_json["hidden_size"])
        inter = int(config_json["intermediate_size"])
        layers = min(layers or 10**9, int(config_json["num_hidden_layers"]))
        heads = int(config_json["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv = int(config_json.get("num_key_value_heads") or heads) * int(config_json.get("head_dim") or hidden // heads)
    q = heads * int(config_json.get("head_dim") or hidden // heads)
    shapes = [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]
    return layers * sum(rank * (i + o) for i, o in shapes)


def estimate_memory_gb(config: dict[str, Any], info: ModelInfo, config_json: dict[str, Any],
                       trainable: int | None, on_gpu: bool, longest_row: int | None = None) -> float:
    """Weights + LoRA (weights, grads, Adam states) + activations + logits, in GB.

    Batches are padded to their longest row, not to max_seq_length: with the data's longest row known
    (in tokens, as the trainer renders it), that is the length the peak is computed for.
    """
    training = config.get("training") or {}
    model = config.get("model") or {}
    precision = training.get("precision", "auto")
    four_bit = model.get("load_in_4bit")
    if four_bit is None:  # the engine decides: Unsloth (auto on a GPU where it is installed) loads 4-bit
        four_bit = on_gpu and config.get("engine", "auto") in ("auto", "unsloth") \
            and importlib.util.find_spec("unsloth") is not None
    if four_bit:
        weight_bytes = 0.55
    elif precision in ("bf16", "fp16") or (precision == "auto" and on_gpu):
        weight_bytes = 2
    else:
        weight_bytes = 4
    params = info.parameters or 0
    weights = params * weight_bytes
    adapter = (trainable or 0) * 16  # fp32 weight + grad + two Adam moments
    batch = int(training.get("per_device_train_batch_size", 2))
    if config.get("method") == "kto":
        batch *= 2  # KTO also runs the mismatched (KL) completions through the model
    seq = int(model.get("max_seq_length", 1024))
    if longest_row:
        seq = min(seq, int(longest_row))
    hidden = int(config_json.get("hidden_size") or 0)
    layers = int(config_json.get("num_hidden_layers") or 0)
    vocab = int(config_json.get("vocab_size") or 0)
    per_token_layer = hidden * (6 if training.get("gradient_checkpointing") else 34)
    activations = batch * seq * layers * per_token_layer * (2 if weight_bytes <= 2 else 4) / 2
    logits = batch * seq * vocab * 4 * 3
    overhead = 0.4 * GB if on_gpu else 0.2 * GB
    return (weights + adapter + activations + logits + overhead) / GB


MASKS = {"markers": "loss on assistant turns, from the template's {% generation %} markers",
         "prefix": "loss on assistant turns, derived from the template (each turn's rendering is a prefix)",
         "trl": "loss on assistant turns, from TRL's training variant of the template",
         "all": "loss on every token (training.completion_only_loss: false)",
         "completion": "loss on the completion after the rendered prompt"}


def describe_template(info: dict[str, Any], why: bool = True) -> str:
    """One line: which template, why, and what the loss is computed on."""
    text = f"{info['name']}: {info['reason']}" if why else info["name"]
    if info.get("mask") in MASKS:
        text += f"; {MASKS[info['mask']]}"
    return text


def probe_data(config: dict[str, Any], timeout: float = 300) -> dict[str, Any] | None:
    """Token lengths and the chat-template checks, from the real tokenizer in a child process."""
    if importlib.util.find_spec("transformers") is None:
        return None
    payload = json.dumps(config)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    out = subprocess.run([sys.executable, "-m", "trainers.preflight_probe"], input=payload, capture_output=True,
                         text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "the data probe failed")
    return json.loads(out.stdout)


def _template_findings(report: PreflightReport, probe: dict[str, Any], config: dict[str, Any], dataset_path: str) -> None:
    """Template choice as info; every row that would train on text that lost the data as an error, with the fix."""
    if probe.get("template_error"):
        report.add("error", "template", probe["template_error"])
        return
    info = probe.get("template")
    if not info:
        return
    report.chat_template = info
    setting = str((config.get("model") or {}).get("chat_template") or "auto")
    platform = str(config.get("platform", "auto"))
    if info.get("source") != "model":
        report.add("info", "template", f"training with {info['name']}, not the model's own template: {info['reason']}")
    if info.get("added_tokens"):
        tokens = ", ".join(info["added_tokens"])
        if platform == "mlx":
            report.add("error", "template", f"{info['name']} needs tokens the vocabulary lacks ({tokens}) and mlx-lm "
                       "cannot add tokens to a model: use model.chat_template: auto (the model's family) or platform cpu/cuda")
        else:
            report.add("warning", "template", f"{info['name']} adds tokens the vocabulary lacks ({tokens}): their "
                       "embeddings start untrained and are trained with the adapter")
    findings = probe.get("findings") or []
    if not findings:
        return
    for finding in findings[:5]:
        where = f"{dataset_path}:{finding['line']}" if finding.get("line") else dataset_path
        report.add("error", "template", f"{where}: {finding['problem']}")
    rows = probe.get("rows_with_findings", len(findings))
    if rows > 5 or len(findings) > 5:
        report.add("error", "template", f"... {rows} of {info.get('rows_checked', rows)} rows in all")
    mask_only = all("loss mask" in f["problem"] for f in findings)
    if mask_only:
        fix = ("set model.chat_template: auto or a built-in (their assistant turns are marked), or "
               "training.completion_only_loss: false to train on every token")
    elif setting == "model":
        pick = probe.get("auto_would_pick")
        fix = (f"set model.chat_template: auto (it uses {pick} for this model)" if pick and pick != "model"
               else "set model.chat_template to a built-in (chatml-tools, llama3-json, mistral-tools) or a Jinja "
                    "file that renders tools, tool calls and tool results")
    else:
        fix = ("use a template that renders tools, tool calls and tool results: model.chat_template: auto, "
               "chatml-tools, llama3-json, mistral-tools, or a Jinja file")
    report.add("error", "template", f"the run would train on text that lost the data; fix: {fix}")


def _check_memory(report: PreflightReport, config: dict[str, Any], info: ModelInfo, config_json: dict[str, Any],
                  on_gpu: bool, platform: str, gpu_free: float | None, longest: int | None) -> None:
    needed = estimate_memory_gb(config, info, config_json, report.trainable_parameters, on_gpu, longest)
    report.memory_needed_gb = needed
    # MLX on Apple silicon trains in unified memory, which the free-RAM figure measures too.
    report.memory_kind = "GPU" if on_gpu else ("unified memory" if platform == "mlx" and sys.platform == "darwin"
                                                else "RAM")
    report.memory_available_gb = gpu_free if on_gpu else available_ram_gb()
    available = report.memory_available_gb
    if available is None:
        return
    if needed > available:
        report.add("error", "memory", f"needs ~{needed:.1f} GB but only {available:.1f} GB {report.memory_kind} "
                   "is free: lower per_device_train_batch_size or max_seq_length, or load_in_4bit")
    elif needed > 0.85 * available:
        report.add("warning", "memory", f"needs ~{needed:.1f} GB of {available:.1f} GB free "
                   f"{report.memory_kind}: little headroom")


def run_preflight(config: dict[str, Any], runs_dir: Path, *, count_tokens: bool = True) -> PreflightReport:
    report = PreflightReport()
    method = str(config.get("method", "sft"))
    platform = str(config.get("platform", "auto"))
    training = config.get("training") or {}
    lora = config.get("lora") or {}
    model_name = str((config.get("model") or {}).get("name", ""))

    # Platform and engine: what this machine can actually do.
    gpu_free = free_gpu_memory_gb()
    if platform == "cuda" and gpu_free is None:
        report.add("error", "platform", "platform is cuda but no NVIDIA GPU was found (nvidia-smi missing or failing)")
    if platform == "mlx" and importlib.util.find_spec("mlx_lm") is None:
        report.add("error", "extras", "platform mlx needs the mlx extra: pip install -c .ci/constraints.txt -e '.[mlx]'")
    if config.get("engine") == "unsloth" and importlib.util.find_spec("unsloth") is None:
        report.add("error", "engine", "engine is unsloth but unsloth is not installed in this environment "
                   "(it needs its own: pip install -c .ci/constraints.txt -e '.[unsloth]')")
    if platform != "mlx" and (importlib.util.find_spec("trl") is None or importlib.util.find_spec("torch") is None):
        report.add("error", "extras", "training needs the train extra: pip install -c .ci/constraints.txt -e '.[train]'")
    # MLX trains in unified memory (RAM on Linux), never on an NVIDIA card this machine may also have.
    on_gpu = gpu_free is not None and platform not in ("cpu", "mlx")

    # Model: exact size from the files on disk.
    info = read_model_info(Path(model_name)) if model_name else None
    config_json: dict[str, Any] = {}
    if info is None:
        if Path(model_name).exists() or model_name.startswith((".", "/", "~")):
            report.add("error", "model", f"{model_name}: not a model directory (no config.json)")
        elif os.environ.get("HF_HUB_OFFLINE") == "1":
            report.add("error", "model", f"{model_name}: not a local directory and HF_HUB_OFFLINE=1")
        else:
            report.add("warning", "model", f"{model_name}: not on disk; it will be downloaded from the Hub "
                       "(size unknown until then, memory not estimated)")
    else:
        config_json = json.loads((info.path / "config.json").read_text())
        report.parameters = info.parameters
        full = platform == "mlx" and lora.get("fine_tune_type") == "full"
        report.trainable_parameters = info.parameters if full else lora_parameters(
            info, config_json, int(lora.get("r", 16)), layers=mlx_layers(lora) if platform == "mlx" else None)
        if info.parameters and info.parameters < 2e9 and int(lora.get("r", 16)) > 64:
            report.add("warning", "lora", f"rank {lora.get('r')} is high for a {info.parameters / 1e9:.2g}B model; 8-32 is usual")

    # Dataset: every row, with the trainers' own checks.
    dataset_path = str((config.get("dataset") or {}).get("path") or "")
    if not dataset_path:
        report.add("error", "dataset", "dataset.path is not set")
    else:
        try:
            # Streamed: pre-flight holds one row at a time, whatever the file's size.
            data_report = check_rows(dataset_path, method, max_rows=(config.get("dataset") or {}).get("max_rows"))
        except DatasetError as exc:
            for problem in exc.problems:
                report.add("error", "dataset", str(problem))
            if exc.total > len(exc.problems):
                report.add("error", "dataset", f"... and {exc.total - len(exc.problems)} more problems in {dataset_path}")
        else:
            report.rows = data_report.rows
            balance = f", {data_report.desirable} desirable / {data_report.undesirable} undesirable" if method == "kto" else ""
            report.add("info", "dataset", f"{data_report.rows} rows, {data_report.tool_calls} tool calls{balance}")
            for warning in data_report.warnings:
                report.add("warning", "dataset", warning)
            batch = int(training.get("per_device_train_batch_size", 2))
            if data_report.rows < batch:
                report.add("error", "dataset", f"{data_report.rows} rows is fewer than one batch of {batch}")
            if count_tokens and info is not None:
                try:
                    probe = probe_data(config)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    report.add("warning", "tokens", f"could not render the data with the chat template: {exc}")
                    probe = None
                # None without the train extra: no tokenizer to count with (the extras error says why).
                if probe is not None:
                    _template_findings(report, probe, config, dataset_path)
                stats = (probe or {}).get("tokens")
                if stats is not None:
                    report.token_stats = stats
                    lost = stats.get("nothing_to_learn", 0)
                    if lost == stats["rows"]:
                        report.add("error", "tokens", f"every row's prompt is longer than max_seq_length "
                                   f"{stats['max_length']}: nothing would be left to learn from (p50 row: "
                                   f"{stats['p50']} tokens); raise model.max_seq_length")
                    elif lost:
                        report.add("warning", "tokens", f"{lost} of {stats['rows']} rows lose all their answer to "
                                   f"truncation at max_seq_length {stats['max_length']} and will be dropped")
                    if stats["over_max"]:
                        report.add("warning", "tokens", f"{stats['over_max']} of {stats['rows']} rows are longer than "
                                   f"max_seq_length {stats['max_length']} and will be truncated")

    if info is not None and info.parameters:
        longest = (report.token_stats or {}).get("max")
        _check_memory(report, config, info, config_json, on_gpu, platform, gpu_free, longest)

    # Hyperparameters.
    lr = float(training.get("learning_rate", 2e-4))
    low, high = LR_RANGES.get(method, LR_RANGES["sft"])
    if lr > high:
        report.add("warning", "training", f"learning_rate {lr:g} is high for {method.upper()} with LoRA (usual {low:g}-{high:g})")
    elif lr < low:
        report.add("warning", "training", f"learning_rate {lr:g} is low for {method.upper()} with LoRA (usual {low:g}-{high:g}); "
                   "the adapter will barely move")
    if int(lora.get("alpha", 32)) > 4 * int(lora.get("r", 16)):
        report.add("warning", "lora", f"alpha {lora.get('alpha')} is more than 4x rank {lora.get('r')}: updates are scaled up a lot")

    # Output: writable, and room for checkpoints.
    runs_dir = Path(runs_dir)
    probe_dir = runs_dir if runs_dir.exists() else next((p for p in runs_dir.parents if p.exists()), Path("/"))
    if not os.access(probe_dir, os.W_OK):
        report.add("error", "output", f"{runs_dir} is not writable")
    else:
        free = shutil.disk_usage(probe_dir).free / GB
        adapter_gb = (report.trainable_parameters or 0) * 4 * 3 / GB  # weights + two Adam moments per checkpoint
        keep = int(training.get("save_total_limit") or 10) + 2
        need = adapter_gb * keep + 0.5
        if free < need:
            report.add("error", "disk", f"{free:.1f} GB free in {probe_dir}, checkpoints need ~{need:.1f} GB")
        elif free < 10:
            report.add("warning", "disk", f"only {free:.1f} GB free in {probe_dir}")
    return report
