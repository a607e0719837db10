"""Loading the base model for training: Unsloth's FastLanguageModel on CUDA, else transformers + PEFT.

Everything heavy is imported inside functions: the app imports nothing from here.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

# Unsloth wants explicit module names; these cover Llama, Qwen, Mistral and Gemma families.
UNSLOTH_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_engine(config: dict[str, Any]) -> str:
    """`engine: auto` picks unsloth when a GPU is present and unsloth imports; else transformers."""
    wanted = config.get("engine", "auto")
    if wanted == "unsloth":
        import unsloth  # noqa: F401  (first, before trl/transformers/peft: it patches them on import)

        return wanted
    if wanted != "auto":
        return wanted
    if config.get("platform") == "cpu" or not cuda_available():
        return "transformers"
    if importlib.util.find_spec("unsloth") is None:
        return "transformers"
    try:
        import unsloth  # noqa: F401  (must be imported before transformers to patch it)
    except Exception as exc:  # a broken unsloth install must not stop a run that can go without it
        print(f"[synaptic] unsloth is installed but failed to import ({exc}); using transformers", flush=True)
        return "transformers"
    return "unsloth"


def load_in_4bit(config: dict[str, Any], engine: str) -> bool:
    """The config's choice, else the engine's: Unsloth's QLoRA load is 4-bit, plain transformers is not."""
    wanted = (config.get("model") or {}).get("load_in_4bit")
    return engine == "unsloth" if wanted is None else bool(wanted)


def precision_flags(config: dict[str, Any]) -> dict[str, bool]:
    """bf16/fp16 for TrainingArguments, set explicitly: TRL's own default is bf16=True, which CPUs reject."""
    precision = (config.get("training") or {}).get("precision", "auto")
    if precision == "auto":
        if config.get("platform") == "cpu" or not cuda_available():
            precision = "fp32"
        else:
            import torch

            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def torch_dtype(config: dict[str, Any]):
    import torch

    flags = precision_flags(config)
    return torch.bfloat16 if flags["bf16"] else torch.float16 if flags["fp16"] else torch.float32


def lora_config(config: dict[str, Any], trainable_tokens: dict[str, list[int]] | None = None):
    from peft import LoraConfig

    lora = config.get("lora") or {}
    return LoraConfig(
        # Rows of tokens the chat template needed and the vocabulary lacked: new, so they must learn.
        trainable_token_indices=trainable_tokens or None,
        r=int(lora.get("r", 16)),
        lora_alpha=int(lora.get("alpha", 32)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=lora.get("target_modules", "all-linear"),
        bias=lora.get("bias", "none"),
        use_dora=bool(lora.get("use_dora", False)),
        use_rslora=bool(lora.get("use_rslora", False)),
        task_type="CAUSAL_LM",
    )


def load_tokenizer(config: dict[str, Any]):
    from transformers import AutoTokenizer

    model = config["model"]
    tokenizer = AutoTokenizer.from_pretrained(model["name"], trust_remote_code=bool(model.get("trust_remote_code")))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def grow_vocabulary(model, tokenizer, added: list[int], previous_eos: int | None) -> dict[str, list[int]]:
    """Make room for tokens the chat template added; returns PEFT's trainable_token_indices for them.

    Their input-embedding rows are trained with the adapter. The output rows are not: TRL's loss reads
    the output layer's weight directly, past any PEFT wrapper. So the new end-of-turn token starts as a
    copy of the old end-of-turn token's rows, in and out: the model ends its turns with it from the first
    step, and generation stops on either.
    """
    import torch

    model.resize_token_embeddings(len(tokenizer))
    eos = tokenizer.eos_token_id
    if previous_eos is not None and eos in added:
        with torch.no_grad():
            for layer in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
                layer.weight[eos] = layer.weight[previous_eos]
    names = {module: name for name, module in model.named_modules()}
    return {names[model.get_input_embeddings()].rsplit(".", 1)[-1]: list(added)}


def load_for_training(config: dict[str, Any], engine: str, prepare_tokenizer: Callable[[Any], list[int]]
                      ) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config): peft_config is None when the model already carries its adapter.

    `prepare_tokenizer` puts the run's chat template on the tokenizer and returns the ids of tokens it
    added; the model's embeddings grow to hold them and their rows are trained.
    """
    model_cfg = config["model"]
    if engine == "unsloth":
        from unsloth import FastLanguageModel

        lora = config.get("lora") or {}
        targets = lora.get("target_modules", "all-linear")
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=model_cfg["name"],
            max_seq_length=int(model_cfg.get("max_seq_length", 1024)),
            load_in_4bit=load_in_4bit(config, engine),
            dtype=None,
        )
        if prepare_tokenizer(tokenizer):
            raise ValueError("the chat template needs tokens this model's vocabulary lacks, and Unsloth's LoRA "
                             "cannot train new token rows alone: use a template of the model's family "
                             "(model.chat_template: auto) or engine: transformers")
        model = FastLanguageModel.get_peft_model(
            model,
            r=int(lora.get("r", 16)),
            lora_alpha=int(lora.get("alpha", 32)),
            lora_dropout=float(lora.get("dropout", 0.0)),
            target_modules=UNSLOTH_TARGETS if targets == "all-linear" else targets,
            bias=lora.get("bias", "none"),
            use_gradient_checkpointing="unsloth",
            random_state=int((config.get("training") or {}).get("seed", 42)),
            use_rslora=bool(lora.get("use_rslora", False)),
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer, None

    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(config),
                              "trust_remote_code": bool(model_cfg.get("trust_remote_code"))}
    if load_in_4bit(config, engine):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=kwargs["dtype"])
    model = AutoModelForCausalLM.from_pretrained(model_cfg["name"], **kwargs)
    tokenizer = load_tokenizer(config)
    previous_eos = tokenizer.eos_token_id
    added = prepare_tokenizer(tokenizer)
    trainable = grow_vocabulary(model, tokenizer, added, previous_eos) if added else None
    if tokenizer.eos_token_id is not None and model.generation_config is not None:
        stops = [tokenizer.eos_token_id] + ([previous_eos] if previous_eos not in (None, tokenizer.eos_token_id) else [])
        model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    return model, tokenizer, lora_config(config, trainable)


def training_arguments(config: dict[str, Any], output_dir: str, has_eval: bool, engine: str) -> dict[str, Any]:
    """The TrainingArguments both TRL configs share, every default that matters set explicitly."""
    import dataclasses

    from transformers import TrainingArguments

    training = config.get("training") or {}
    eval_steps = training.get("eval_steps") or training.get("save_steps", 50)
    # transformers 5.2x renamed gradient_checkpointing (the old name warns); older 5.x knows only the old one.
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    args: dict[str, Any] = {
        "output_dir": output_dir,
        "learning_rate": float(training.get("learning_rate", 2e-4)),
        "num_train_epochs": float(training.get("num_train_epochs", 1)),
        "max_steps": int(training.get("max_steps", -1)),
        "per_device_train_batch_size": int(training.get("per_device_train_batch_size", 2)),
        "per_device_eval_batch_size": int(training.get("per_device_eval_batch_size", 2)),
        "gradient_accumulation_steps": int(training.get("gradient_accumulation_steps", 1)),
        "lr_scheduler_type": training.get("lr_scheduler_type", "linear"),
        "weight_decay": float(training.get("weight_decay", 0.0)),
        "max_grad_norm": float(training.get("max_grad_norm", 1.0)),
        "optim": training.get("optim", "adamw_torch"),
        "logging_steps": int(training.get("logging_steps", 1)),
        "save_strategy": "steps",
        "save_steps": int(training.get("save_steps", 50)),
        "save_total_limit": training.get("save_total_limit"),
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": int(eval_steps) if has_eval else None,
        "seed": int(training.get("seed", 42)),
        # Off unless asked (TRL defaults it on); unsloth applies its own.
        checkpointing: bool(training.get("gradient_checkpointing", False)) and engine != "unsloth",
        "report_to": [],
        # Our callback and status.json report progress; tqdm's carriage returns would garble train.log.
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        # Without use_cpu, a multi-process launch on a machine with no GPU silently runs
        # N independent copies instead of one DDP (gloo) run.
        "use_cpu": config.get("platform") == "cpu" or not cuda_available(),
        **precision_flags(config),
    }
    # transformers 5 folded warmup_ratio into warmup_steps: a float below 1 is a ratio.
    if training.get("warmup_steps"):
        args["warmup_steps"] = int(training["warmup_steps"])
    elif training.get("warmup_ratio"):
        args["warmup_steps"] = float(training["warmup_ratio"])
    return args
