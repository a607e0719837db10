"""Preference tuning with TRL's KTOTrainer and a LoRA adapter: python -m trainers.kto --run-dir DIR.

With a PEFT adapter and no ref_model, TRL uses the base model with the
adapter disabled as the reference, so no second copy of the model is loaded.
"""

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

    from trl import KTOConfig, KTOTrainer

    from trainers.common import RunTemplate, load_training_rows, make_callback, split_dataset
    from trainers.datasets_hf import to_dataset
    from trainers.engine import load_for_training, training_arguments

    rows = load_training_rows(writer, "kto")
    template = RunTemplate(writer, rows)
    # KTOTrainer renders prompt and prompt + completion with the tokenizer's template (the run's, set by
    # template.prepare) and trains on the difference.
    model, tokenizer, peft_config = load_for_training(config, engine, template.prepare)
    template.record("completion")
    train_set, eval_set = split_dataset(writer, to_dataset(rows, "kto"))
    training = config["training"]
    kto_args = KTOConfig(
        **training_arguments(config, str(writer.checkpoints_dir), eval_set is not None, engine),
        max_length=int(config["model"].get("max_seq_length", 1024)),
        beta=float(training.get("beta", 0.1)),
        desirable_weight=float(training.get("desirable_weight", 1.0)),
        undesirable_weight=float(training.get("undesirable_weight", 1.0)),
    )
    trainer = KTOTrainer(model=model, args=kto_args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[make_callback(writer, stop)])
    return trainer, tokenizer, engine


def main(argv: list[str] | None = None) -> int:
    return run_training(__doc__, train, argv)


if __name__ == "__main__":
    sys.exit(main())
