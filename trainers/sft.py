"""Supervised fine-tuning with TRL's SFTTrainer and a LoRA adapter: python -m trainers.sft --run-dir DIR."""

from __future__ import annotations

import sys

from trainers.common import run_training


def train(writer, stop, args) -> str:
    from trainers.engine import choose_engine

    config = writer.config
    engine = choose_engine(config)  # before trl is imported: unsloth patches it on import
    writer.update(engine=engine)

    from trl import SFTConfig, SFTTrainer

    from trainers.common import fit, load_datasets, make_callback
    from trainers.engine import load_for_training, training_arguments

    train_set, eval_set = load_datasets(writer, "sft")
    model, tokenizer, peft_config = load_for_training(config, engine)
    sft_args = SFTConfig(
        **training_arguments(config, str(writer.checkpoints_dir), eval_set is not None, engine),
        max_length=int(config["model"].get("max_seq_length", 1024)),
        # Loss only on what the assistant says: needs {% generation %} in the chat template
        # (TRL swaps in a training template for known model families that lack it).
        assistant_only_loss=bool(config["training"].get("completion_only_loss", True)),
        packing=False,
    )
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[make_callback(writer, stop)])
    fit(trainer, tokenizer, writer, stop, args.resume_from)
    return engine


def main(argv: list[str] | None = None) -> int:
    return run_training(__doc__, train, argv)


if __name__ == "__main__":
    sys.exit(main())
