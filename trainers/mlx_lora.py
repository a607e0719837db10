"""LoRA (or DoRA, or full) fine-tuning on Apple MLX with mlx-lm's trainer: python -m trainers.mlx_lora --run-dir DIR.

mlx-lm's `train()` is driven directly, not through `mlx_lm.lora.run()` (which
replaces a callback it is given), at its three seams:

- `training_callback`: our TrainingCallback turns each report into a
  metrics.jsonl line with the same keys the CUDA trainers write;
- `iterate_batches`: train() asks for batch k+1 only after step k is updated
  and reported, so our batch generator is a per-step hook: it evaluates and
  saves checkpoints at exact global steps and ends training on a stop request
  by returning (train()'s loop then ends normally);
- `loss`: cross entropy over a per-token mask, so every assistant turn is
  trained and nothing else: the same mask the TRL trainer uses
  (trainers.chat_templates.encode, from the run's chat template).

mlx-lm's printed table is never parsed. Checkpoints hold the adapter in
mlx-lm's own format (adapters.safetensors + adapter_config.json, loadable with
`mlx_lm.load(..., adapter_path=...)`), the optimizer state and our step
counters, so a resumed run continues its step count, schedule and data order.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from trainers.common import RunWriter, StopRequest, best_score, run_training

ENGINE = "mlx"


def split_rows(rows: list[dict[str, Any]], test_size: float, seed: int):
    import numpy as np

    if not test_size or len(rows) < 4:
        return rows, []
    order = np.random.default_rng(seed).permutation(len(rows))
    n_valid = max(1, int(round(len(rows) * test_size)))
    return [rows[i] for i in order[n_valid:]], [rows[i] for i in order[:n_valid]]


class ChatRows:
    """Checked SFT rows -> (token ids, loss mask), with the interface mlx-lm's CacheDataset wants."""

    def __init__(self, rows: list[dict[str, Any]], tokenizer, assistant_only: bool, strategy: str,
                 training_template: str | None = None) -> None:
        self.rows = rows
        self.hf = getattr(tokenizer, "_tokenizer", tokenizer)  # mlx-lm wraps the transformers tokenizer
        self.assistant_only = assistant_only
        self.strategy, self.training_template = strategy, training_template

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def process(self, row: dict[str, Any]):
        import numpy as np

        from trainers.chat_templates import encode

        ids, mask, _ = encode(self.hf, row["messages"], row.get("tools"), assistant_only=self.assistant_only,
                              strategy=self.strategy if self.assistant_only else None,
                              training_template=self.training_template)
        return ids, np.asarray(mask, dtype=bool)


def masked_loss(model, batch, mask):
    """(mean cross entropy over masked target tokens, their count), as train() and evaluate() call it."""
    import mlx.core as mx
    import mlx.nn as nn

    logits = model(batch[:, :-1])
    losses = nn.losses.cross_entropy(logits, batch[:, 1:]) * mask
    count = mask.sum()
    return losses.astype(mx.float32).sum() / mx.maximum(count, 1), count


def collate(items, max_seq_length: int, pad_to: int = 32):
    import mlx.core as mx
    import numpy as np

    longest = max(len(ids) for ids, _ in items)
    width = min(1 + pad_to * ((longest + pad_to - 1) // pad_to), max_seq_length)
    tokens = np.zeros((len(items), width), np.int32)
    mask = np.zeros((len(items), width - 1), bool)  # over the targets, tokens[:, 1:]
    for row, (ids, weights) in enumerate(items):
        n = min(len(ids), width)
        tokens[row, :n] = ids[:n]
        mask[row, : n - 1] = weights[1:n]
    return mx.array(tokens), mx.array(mask)


class StepHook:
    """Our iterate_batches: length-bucketed, shuffled by (seed) so a resumed run skips exactly what it trained on.

    Before yielding the batch for step k+1 it calls on_step_end(k); returning
    instead of yielding ends train() cleanly.
    """

    def __init__(self, seed: int, start_step: int, on_step_end, should_stop, accumulation: int = 1) -> None:
        self.seed, self.start_step, self.accumulation = seed, start_step, accumulation
        self.on_step_end, self.should_stop = on_step_end, should_stop
        self.epoch = 0.0
        self.stopped_at: int | None = None
        self.steps_per_epoch = 1

    def __call__(self, dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        # By token count: CacheDataset.itemlen() is the raw row's len(), the number of keys of a chat row.
        order = sorted(range(len(dataset)), key=lambda i: len(dataset[i][0]))
        if not loop:  # validation: every row once
            for i in range(0, len(order), batch_size):
                yield collate([dataset[j] for j in order[i: i + batch_size]], max_seq_length)
            return
        if len(dataset) < batch_size:
            raise ValueError(f"{len(dataset)} training rows is fewer than the batch size {batch_size}")
        buckets = [order[i: i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        self.steps_per_epoch = len(buckets)
        yield from self._train_stream(dataset, buckets, max_seq_length)

    def _train_stream(self, dataset, buckets, max_seq_length):
        import numpy as np

        rng = np.random.default_rng(self.seed)
        # Counted in batches; a step is an optimizer update, `accumulation` batches, as in TRL.
        consumed = local = 0
        skip = self.start_step * self.accumulation
        while True:
            for bucket in rng.permutation(len(buckets)):
                consumed += 1
                if consumed <= skip:
                    continue
                if local > 0 and local % self.accumulation == 0:
                    step = self.start_step + local // self.accumulation
                    stopping = self.should_stop()
                    self.on_step_end(step, stopping)
                    if stopping:
                        self.stopped_at = step
                        return
                self.epoch = consumed / len(buckets)
                local += 1
                yield collate([dataset[j] for j in buckets[bucket]], max_seq_length)


def save_adapter(directory: Path, model, adapter_config: dict[str, Any], optimizer=None,
                 state: dict[str, Any] | None = None, tokenizer=None) -> None:
    """Write a checkpoint beside its final place, then rename it in: a reader never sees half of one."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    temp = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    mx.save_safetensors(str(temp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (temp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    if optimizer is not None:
        mx.save_safetensors(str(temp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    if state is not None:
        (temp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    if tokenizer is not None:
        getattr(tokenizer, "_tokenizer", tokenizer).save_pretrained(str(temp))
    shutil.rmtree(directory, ignore_errors=True)
    temp.rename(directory)


def apply_adapters(model, config: dict[str, Any]) -> dict[str, Any]:
    """Freeze the model and add the adapter the config asks for; returns mlx-lm's adapter_config."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    lora = config.get("lora") or {}
    kind = str(lora.get("fine_tune_type") or ("dora" if lora.get("use_dora") else "lora"))
    num_layers = int(lora.get("num_layers", -1))
    rank = int(lora.get("r", 16))
    parameters = {"rank": rank, "scale": float(lora.get("alpha", 32)) / rank, "dropout": float(lora.get("dropout", 0.0))}
    model_layers = len(getattr(model, "layers", [])) or num_layers
    layers = model_layers if num_layers == -1 else num_layers
    if kind == "full":
        model.unfreeze()
    else:
        model.freeze()
        linear_to_lora_layers(model, layers, parameters, use_dora=kind == "dora")
    return {"model": str(config["model"]["name"]), "fine_tune_type": kind, "num_layers": layers,
            "lora_parameters": parameters}


def train(writer: RunWriter, stop: StopRequest, args) -> str:
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.datasets import CacheDataset
    from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, evaluate
    from mlx_lm.tuner.trainer import train as mlx_train
    from mlx_lm.tuner.utils import build_schedule
    from mlx_lm.utils import load

    from synaptic_tui.scoring import best_step, metrics_at
    from trainers.chat_templates import MaskError, mask_strategy
    from trainers.common import RunTemplate, TrainingHealth
    from trainers.data import load_rows

    config = writer.config
    writer.update(engine=ENGINE)
    training = config.get("training") or {}
    dataset_cfg = config.get("dataset") or {}
    seed = int(training.get("seed", 42))
    batch_size = int(training.get("per_device_train_batch_size", 2))
    max_length = int((config.get("model") or {}).get("max_seq_length", 2048))
    mx.random.seed(seed)

    rows, report = load_rows(dataset_cfg["path"], "sft", max_rows=dataset_cfg.get("max_rows"))
    print(f"[synaptic] {report.rows} SFT rows from {report.path} ({report.tool_calls} tool calls)", flush=True)
    train_rows, valid_rows = split_rows(rows, float(dataset_cfg.get("test_size") or 0), seed)
    model, tokenizer = load(str(config["model"]["name"]))
    template = RunTemplate(writer, rows)
    if template.prepare(getattr(tokenizer, "_tokenizer", tokenizer)):
        raise ValueError(f"{template.choice.name} needs tokens the model's vocabulary lacks, and mlx-lm cannot add "
                         "tokens to a model: use model.chat_template: auto (a template of the model's family)")
    adapter_config = apply_adapters(model, config)
    assistant_only = bool(training.get("completion_only_loss", True))
    strategy, training_template = "all", None
    if assistant_only:
        strategy, training_template, failed = mask_strategy(getattr(tokenizer, "_tokenizer", tokenizer), rows)
        if failed:
            raise MaskError(f"row {failed[0][0] + 1}: the assistant-only loss mask cannot be derived from the chat "
                            f"template ({failed[0][1]}); use model.chat_template: auto or a built-in, or "
                            "training.completion_only_loss: false")
    template.record(strategy)
    print(f"[synaptic] loss on {'the assistant turns' if assistant_only else 'every token'} (mask: {strategy})",
          flush=True)
    train_set = CacheDataset(ChatRows(train_rows, tokenizer, assistant_only, strategy, training_template))
    valid_set = (CacheDataset(ChatRows(valid_rows, tokenizer, assistant_only, strategy, training_template))
                 if valid_rows else None)
    health = TrainingHealth(writer)

    accumulation = int(training.get("gradient_accumulation_steps", 1))
    # Steps are optimizer updates (as TRL counts them); mlx-lm's train() counts batches.
    steps_per_epoch = max(1, len(train_rows) // batch_size // accumulation)
    max_steps = int(training.get("max_steps", -1))
    total = max_steps if max_steps > 0 else math.ceil(float(training.get("num_train_epochs", 1)) * steps_per_epoch)
    lr = float(training.get("learning_rate", 2e-4))
    warmup = int(training.get("warmup_steps") or round(float(training.get("warmup_ratio") or 0) * total))
    if str(training.get("lr_scheduler_type", "linear")) == "constant":
        schedule: Any = lr
    else:
        schedule = build_schedule({"name": "cosine_decay", "arguments": [lr, max(1, total - warmup), 0.0],
                                   "warmup": warmup, "warmup_init": 0.0} if warmup else
                                  {"name": "cosine_decay", "arguments": [lr, total, 0.0]})
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=float(training.get("weight_decay", 0.0)))

    start, trained_tokens = 0, 0.0
    if args.resume_from:
        checkpoint = writer.checkpoints_dir / args.resume_from
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        start, trained_tokens = int(state["global_step"]), float(state.get("trained_tokens", 0))
        model.load_weights(str(checkpoint / "adapters.safetensors"), strict=False)
        optimizer.state = tree_unflatten(list(mx.load(str(checkpoint / "optimizer.safetensors")).items()))
        print(f"[synaptic] resumed from {args.resume_from} at step {start} (adapter and optimizer state)", flush=True)

    save_steps = int(training.get("save_steps", 50))
    eval_steps = int(training.get("eval_steps") or save_steps)
    keep = training.get("save_total_limit")
    saved = set(writer.checkpoint_steps())
    evaluated: set[int] = set()
    writer.update(max_steps=total, step=start)

    class MetricsCallback(TrainingCallback):
        """train()'s reports, renamed to the keys every trainer writes, at global step numbers."""

        def __init__(self) -> None:
            self.trained_tokens = trained_tokens

        def record(self, fields: dict[str, Any]) -> None:
            fields = {k: (v.item() if hasattr(v, "item") else v) for k, v in fields.items()}
            writer.log_metrics({"step": fields.pop("step"), "epoch": round(hook.epoch, 4),
                                "time": round(time.time(), 3), **fields})

        def on_train_loss_report(self, info: dict[str, Any]) -> None:
            step = int(info["iteration"]) // accumulation + start
            self.trained_tokens = float(info["trained_tokens"]) + trained_tokens
            fields = {"step": step, "loss": info["train_loss"], "learning_rate": info["learning_rate"],
                      "tokens_per_second": info["tokens_per_second"],
                      "iterations_per_second": info["iterations_per_second"],
                      "peak_memory_gb": info["peak_memory"], "trained_tokens": self.trained_tokens}
            loss = fields["loss"]
            try:
                warning = health.check(step, {"loss": loss.item() if hasattr(loss, "item") else loss})
            except Exception:
                self.record(fields)
                writer.update(step=step)
                raise
            if warning:
                fields["health_warning"] = warning
            self.record(fields)
            writer.update(step=step)

    callback = MetricsCallback()

    def run_eval(step: int) -> None:
        if valid_set is None or step in evaluated:
            return
        started = time.perf_counter()
        loss = evaluate(model=model, dataset=valid_set, batch_size=batch_size, num_batches=-1,
                        max_seq_length=max_length, loss=masked_loss, iterate_batches=hook)
        model.train()
        evaluated.add(step)
        callback.record({"step": step, "eval_loss": loss, "eval_runtime": round(time.perf_counter() - started, 3)})

    def save(step: int) -> None:
        if step in saved and (writer.checkpoints_dir / f"checkpoint-{step}").is_dir():
            return
        state = {"global_step": step, "max_steps": total, "trained_tokens": callback.trained_tokens,
                 "epoch": hook.epoch, "seed": seed}
        save_adapter(writer.checkpoints_dir / f"checkpoint-{step}", model, adapter_config, optimizer, state, tokenizer)
        saved.add(step)
        best = best_step("sft", {s: metrics_at(s, writer.history) for s in saved})
        if keep:
            # Oldest first, never the best: what save_total_limit does for the CUDA trainers.
            for old in sorted(s for s in saved if s not in (best, step))[: max(0, len(saved) - int(keep))]:
                shutil.rmtree(writer.checkpoints_dir / f"checkpoint-{old}", ignore_errors=True)
                saved.discard(old)
        writer.update(step=step, last_checkpoint=f"checkpoint-{step}",
                      best_checkpoint=f"checkpoint-{best}" if best is not None else None,
                      best_score=best_score(writer, best))

    def on_step_end(step: int, stopping: bool) -> None:
        if step % eval_steps == 0:
            run_eval(step)
        if step % save_steps == 0 or stopping:
            save(step)

    hook = StepHook(seed, start, on_step_end, lambda: stop.requested, accumulation)
    arguments = TrainingArgs(
        batch_size=batch_size, iters=(total - start) * accumulation, val_batches=-1,
        steps_per_report=int(training.get("logging_steps", 1)) * accumulation,
        steps_per_eval=10**9, steps_per_save=10**9,  # both done at exact steps by our hook
        adapter_file=str(writer.run_dir / ".mlx-adapters.safetensors"), max_seq_length=max_length,
        grad_checkpoint=bool(training.get("gradient_checkpointing", False)),
        grad_accumulation_steps=accumulation,
    )
    if arguments.iters > 0:
        mlx_train(model=model, optimizer=optimizer, train_dataset=train_set, val_dataset=None, args=arguments,
                  loss=masked_loss, iterate_batches=hook, training_callback=callback)
    (writer.run_dir / ".mlx-adapters.safetensors").unlink(missing_ok=True)
    if hook.stopped_at is not None:
        return ENGINE  # the hook saved checkpoint-<step>; run_training writes `cancelled`
    # train() never asks for a batch after the last step: finish that step here.
    run_eval(total)
    save(total)
    save_adapter(writer.final_dir, model, adapter_config, tokenizer=tokenizer)
    writer.update(step=total)
    return ENGINE


def main(argv: list[str] | None = None) -> int:
    return run_training(__doc__, train, argv)


if __name__ == "__main__":
    sys.exit(main())


# --- used by trainers.export for MLX runs ----------------------------------------


def adapter_max(adapter_dir: Path) -> float:
    """Largest |LoRA B| weight of an mlx-lm adapter: 0 means fusing would give the base model back."""
    import mlx.core as mx

    weights = mx.load(str(adapter_dir / "adapters.safetensors"))
    values = [float(mx.abs(w).max()) for name, w in weights.items() if name.endswith("lora_b")]
    return max(values) if values else 1.0  # a full fine-tune has no LoRA B: its weights are the change


def fuse(base_model: str, adapter_dir: Path, out: Path, dtype: str = "bfloat16") -> None:
    """Fuse the adapter into the base with mlx-lm and save a Hugging Face model directory."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import load, save

    model, tokenizer, config = load(base_model, adapter_path=str(adapter_dir), return_config=True)
    _use_trained_template(tokenizer, adapter_dir)
    fused = [(name, module.fuse()) for name, module in model.named_modules() if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    model.set_dtype(getattr(mx, dtype))
    config["torch_dtype"] = dtype
    save(out, base_model, model, tokenizer, config, donate_model=False)


def _use_trained_template(tokenizer, adapter_dir: Path) -> None:
    """mlx-lm loads the base model's tokenizer; the run trained with the template saved beside its adapter."""
    from transformers import AutoTokenizer

    if (adapter_dir / "tokenizer_config.json").is_file():
        trained = AutoTokenizer.from_pretrained(str(adapter_dir))
        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        hf.chat_template = trained.chat_template
        if trained.eos_token and trained.eos_token != hf.eos_token:
            hf.eos_token = trained.eos_token


def generate_probe(base_model: str, adapter_dir: Path) -> str:
    """A few greedy tokens through mlx-lm with the adapter loaded."""
    from mlx_lm import generate, load

    model, tokenizer = load(base_model, adapter_path=str(adapter_dir))
    _use_trained_template(tokenizer, adapter_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True)
    text = generate(model, tokenizer, prompt=prompt, max_tokens=4, verbose=False)
    return text
