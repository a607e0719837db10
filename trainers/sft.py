"""Supervised fine-tuning with TRL's SFTTrainer and a LoRA adapter: python -m trainers.sft --run-dir DIR."""

from __future__ import annotations

import sys

from trainers.common import run_training


def train(writer, stop, args) -> str:
    from trainers.common import fit

    trainer, tokenizer, engine = build_trainer(writer, stop)
    fit(trainer, tokenizer, writer, stop, args.resume_from)
    return engine


def build_trainer(writer, stop):
    """(trainer, tokenizer, engine) for the run, ready to train: what `train` runs, and what tests inspect."""
    from trainers.engine import choose_engine

    config = writer.config
    engine = choose_engine(config)  # before trl is imported: unsloth patches it on import
    writer.update(engine=engine)

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trainers.common import RunTemplate, encode_sft_rows, load_training_rows, make_callback, split_dataset
    from trainers.engine import load_for_training, training_arguments

    rows = load_training_rows(writer, "sft")
    template = RunTemplate(writer, rows)
    model, tokenizer, peft_config = load_for_training(config, engine, template.prepare)
    assistant_only = bool(config["training"].get("completion_only_loss", True))
    # Tokenized here, with the mask from the run's chat template (its {% generation %} markers, or derived
    # from the template itself): the same code pre-flight checked the rows with. TRL builds labels from
    # `assistant_masks` and truncates to max_length.
    encoded, strategy = encode_sft_rows(tokenizer, rows, assistant_only)
    template.record(strategy)
    print(f"[synaptic] loss on {'the assistant turns' if assistant_only else 'every token'} "
          f"(mask: {strategy})", flush=True)
    train_set, eval_set = split_dataset(writer, Dataset.from_list(encoded))
    sft_args = SFTConfig(
        **training_arguments(config, str(writer.checkpoints_dir), eval_set is not None, engine),
        max_length=int(config["model"].get("max_seq_length", 1024)),
        assistant_only_loss=False,  # the mask is already in the data
        packing=False,
    )
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[make_callback(writer, stop)])
    return trainer, tokenizer, engine


def main(argv: list[str] | None = None) -> int:
    return run_training(__doc__, train, argv)


if __name__ == "__main__":
    sys.exit(main())
