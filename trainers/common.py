"""What every trainer shares: the run directory it writes, its metrics callback, and a clean stop.

The trainer is the only writer of its run directory while it runs (it holds
the run's lock, run.lock, for its whole life): status.json (atomically),
metrics.jsonl (one flushed line per log event), checkpoints/checkpoint-N and
final/. SIGTERM or SIGINT finishes the current step, saves a checkpoint and
ends the run `cancelled`; a crash ends it `failed` with the last lines of the
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from synaptic_tui.follow import JsonlFollower
from synaptic_tui.runs import RunStatus, read_run_config, read_status, utc_now, write_status
from synaptic_tui.scoring import best_step, metrics_at

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_LOCKED = 2  # another trainer holds the run: nothing was written

# Progress bars write carriage returns into train.log; our status.json and metrics carry progress.
for _name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
    os.environ.setdefault(_name, "1")


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-dir", required=True, type=Path, help="the run directory (holds run.yaml)")
    parser.add_argument("--resume-from", metavar="CHECKPOINT", help="checkpoint-N to continue from")
    return parser.parse_args(argv)


def is_main_process() -> bool:
    """Rank 0 (or a single process): only it writes the run directory."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


class StopRequest:
    """Set by a stop signal; the training loop checks it after each step and saves before it stops.

    SIGTERM always means "finish the step, save a checkpoint, stop", however often it arrives: a user
    who cancels twice, or a cluster where the scheduler and torch's launcher both signal each rank,
    must not lose the checkpoint. Stopping at once, without one, takes SIGUSR1 (`runs cancel --now`)
    or a SIGINT after the first stop request (ctrl+c twice in a terminal).
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self.on_request: Callable[[], None] | None = None  # records the request (status.json)

    def install(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1 or (signum == signal.SIGINT and self.requested):
            raise KeyboardInterrupt(f"{name}: stopping now, without a checkpoint")
        if self.requested:
            print(f"[synaptic] {name} received again: already stopping (the checkpoint is saved first)",
                  file=sys.stderr, flush=True)
            return
        self.requested = True
        self.signal_name = name
        print(f"[synaptic] {name} received: finishing this step, saving a checkpoint, then stopping",
              file=sys.stderr, flush=True)
        self.record()

    def record(self) -> None:
        if self.requested and self.on_request is not None:
            try:
                self.on_request()
            except OSError as exc:  # a full disk must not turn a clean stop into a crash
                print(f"[synaptic] could not record the stop request: {exc}", file=sys.stderr, flush=True)


def hold_run_lock(run_dir: Path) -> int | None:
    """This trainer's hold on the run's lock: inherited from the launcher, or taken here when started by
    hand. Raises RunLocked when another trainer holds it. DDP workers hold nothing: their launcher does."""
    from synaptic_tui import run_lock

    fd = run_lock.inherited(run_dir)
    if fd is not None:
        os.set_inheritable(fd, False)
        if is_main_process():
            run_lock.note_holder(fd, run_dir, pid=os.getpid(), role="trainer")
        return fd
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        if not is_main_process() or run_lock.held(run_dir):
            return None
    return run_lock.take(run_dir, role="trainer")


class RunWriter:
    """The run directory, as written by the trainer."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        # Other ranks may read before rank 0 has rewound the files: they filter for themselves.
        self.resume_step = resume_step
        self.config = read_run_config(self.run_dir)
        if not self.config:
            raise SystemExit(f"{self.run_dir / 'run.yaml'}: missing or unreadable; is this a run directory?")
        self.method = str(self.config.get("method", "sft"))
        self.status = read_status(self.run_dir) or RunStatus()
        self.main = is_main_process()
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") if self.main else None
        self.history: list[dict[str, Any]] = self._read_history()

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.run_dir / "final"

    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoint-N directories on disk, oldest first."""
        from synaptic_tui.runs import list_checkpoints

        return [c.step for c in list_checkpoints(self.run_dir) if c.step is not None]

    def _read_history(self) -> list[dict[str, Any]]:
        """Metrics already logged (a resumed run), so the best checkpoint is judged over the whole run."""
        records = JsonlFollower(self.run_dir / "metrics.jsonl").read_all()
        if self.resume_step is None:
            return records
        return [r for r in records if not isinstance(r.get("step"), int) or r["step"] <= self.resume_step]

    def update(self, **fields: Any) -> None:
        if not self.main:
            return
        for key, value in fields.items():
            if key in RunStatus.__dataclass_fields__:
                setattr(self.status, key, value)
            else:
                self.status.extra[key] = value
        write_status(self.run_dir, self.status)

    def log_metrics(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self._metrics is not None:
            self._metrics.write(json.dumps(record, default=float) + "\n")
            self._metrics.flush()

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()


def rewind(run_dir: Path, step: int) -> Path | None:
    """Resuming from checkpoint-N after the run went past N: the metrics lines and checkpoints after N
    belong to a path the run no longer takes. They move to superseded-<time>/ in the run (nothing is
    lost), and metrics.jsonl is rewritten, atomically, with what came up to N, so steps stay continuous
    and the best checkpoint is judged on the run as it now is. Returns that folder, or None."""
    from synaptic_tui.runs import atomic_write_text, list_checkpoints

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        lines = []
    kept, dropped = [], []
    for line in lines:
        try:
            record_step = json.loads(line).get("step")
        except (ValueError, AttributeError, RecursionError):
            record_step = None
        (dropped if isinstance(record_step, int) and record_step > step else kept).append(line)
    # The final adapter of a run that had finished belongs to the path given up, too.
    later = [c for c in list_checkpoints(run_dir) if c.step is None or c.step > step]
    if not dropped and not later:
        return None
    superseded = run_dir / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
    (superseded / "checkpoints").mkdir(parents=True, exist_ok=True)
    for checkpoint in later:
        target = superseded / checkpoint.name if checkpoint.is_final else superseded / "checkpoints" / checkpoint.name
        checkpoint.path.rename(target)
    if dropped:
        (superseded / "metrics.jsonl").write_text("".join(dropped), encoding="utf-8")
        atomic_write_text(path, "".join(line if line.endswith("\n") else line + "\n" for line in kept))
    return superseded


def _all_ranks_agree(flag: bool, device) -> bool:
    """True on every rank when any rank's flag is set: a stop must happen at the same step everywhere,
    or the ranks that go on wait for the others' gradients for ever."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    import torch

    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def best_score(writer: RunWriter, step: int | None) -> dict[str, Any] | None:
    """What ranked the best checkpoint, for lists of runs: {"metric": "eval_loss", "value": 0.41}."""
    from synaptic_tui.scoring import ranking_metric

    ranked = ranking_metric(writer.method, metrics_at(step, writer.history)) if step is not None else None
    return {"metric": ranked[0], "value": round(ranked[1], 6)} if ranked else None


class UnhealthyTraining(RuntimeError):
    """Training that can only waste time (diverged, or learning nothing); the message is the run's error."""


class TrainingHealth:
    """Watches each log record for a run that diverged or stopped learning.

    Non-finite loss or gradient norm: the run has diverged. A gradient norm of 0 for `unhealthy_steps`
    logged steps in a row: nothing is being learned (a mask that selects nothing, a learning rate of 0).
    KTO log-probs of chosen and rejected completions equal to the last digit, step after step: the two
    render to the same text. Each is a warning in metrics.jsonl and status.json; the first two end the
    run `failed` unless training.stop_on_unhealthy is false.
    """

    def __init__(self, writer: RunWriter) -> None:
        training = writer.config.get("training") or {}
        self.writer = writer
        self.stop = bool(training.get("stop_on_unhealthy", True))
        self.patience = int(training.get("unhealthy_steps", 3))
        self.zero_grad_steps: list[int] = []
        self.equal_logps_steps: list[int] = []

    def check(self, step: int, logs: dict[str, Any]) -> str | None:
        """The warning for this record, if any; raises UnhealthyTraining when the run must end."""
        import math

        def number(key: str) -> float | None:
            value = logs.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        fatal = warning = None
        for key, label in (("loss", "the loss"), ("eval_loss", "the eval loss"), ("grad_norm", "the gradient norm")):
            value = number(key)
            if value is not None and not math.isfinite(value):
                fatal = f"diverged at step {step}: {label} is {value}"
                break
        grad = number("grad_norm")
        if fatal is None and grad is not None:
            self.zero_grad_steps = self.zero_grad_steps + [step] if grad == 0.0 else []
            if self.zero_grad_steps:
                warning = f"gradient norm is 0 at step {step}"
            if len(self.zero_grad_steps) >= self.patience:
                fatal = (f"the gradient norm was 0 for {len(self.zero_grad_steps)} logged steps in a row (steps "
                         f"{self.zero_grad_steps[0]}-{step}): nothing is being learned. Check the loss mask and the "
                         "chat template (synaptic-tui train --dry-run shows both) and the learning rate")
        chosen, rejected = number("logps/chosen"), number("logps/rejected")
        if chosen is not None and rejected is not None:
            self.equal_logps_steps = self.equal_logps_steps + [step] if chosen == rejected else []
            if len(self.equal_logps_steps) >= self.patience:
                warning = (f"chosen and rejected log-probs have been equal for {len(self.equal_logps_steps)} steps: "
                           "the desirable and undesirable completions may render to the same text")
        message = fatal or warning
        if message is not None:
            recent = list(self.writer.status.extra.get("health_warnings") or [])[-4:]
            self.writer.update(health_warnings=recent + [{"step": step, "message": message}])
        if fatal is not None and self.stop:
            raise UnhealthyTraining(fatal + " (training.stop_on_unhealthy: false to train on regardless)")
        return message


def make_callback(writer: RunWriter, stop: StopRequest):
    """A transformers TrainerCallback bound to this run (built here so the module imports without transformers)."""
    from transformers import TrainerCallback

    class SynapticCallback(TrainerCallback):
        def __init__(self) -> None:
            # Checkpoints on disk (a resumed run has some) plus the ones this run saves.
            self.saved = {step for step in writer.checkpoint_steps()
                          if writer.resume_step is None or step <= writer.resume_step}
            self.best_step = self._best()
            self._last_status_write = 0.0
            self.health = TrainingHealth(writer)

        def _best(self) -> int | None:
            return best_step(writer.method, {step: metrics_at(step, writer.history) for step in self.saved})

        def on_train_begin(self, args, state, control, **kwargs):
            writer.update(state="running", max_steps=state.max_steps, step=state.global_step)
            if self.best_step is not None:
                state.best_global_step = self.best_step

        def on_step_end(self, args, state, control, **kwargs):
            # Cancel signals rank 0 (or every rank): all of them stop after this same step.
            if _all_ranks_agree(stop.requested, args.device):
                control.should_save = True
                control.should_training_stop = True
            now = time.monotonic()
            if now - self._last_status_write >= 1.0:
                self._last_status_write = now
                writer.update(step=state.global_step, max_steps=state.max_steps)
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            # Every rank keeps the history and the best step: transformers waits on a barrier
            # before protecting best_global_step, so all ranks must agree on it. Only rank 0 writes.
            if not logs:
                return
            record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
            record.update({k: v for k, v in logs.items() if k not in record})
            try:
                warning = self.health.check(state.global_step, logs)
            except UnhealthyTraining:
                writer.log_metrics(record)  # the record that shows the divergence stays in the history
                # on_step_end writes the step at most once a second: the failed run names the step it ended at.
                writer.update(step=state.global_step, max_steps=state.max_steps)
                raise
            if warning:
                record["health_warning"] = warning
            writer.log_metrics(record)
            # Checkpoints are saved right after this log in the same step: point transformers at
            # our best so its save_total_limit rotation never deletes it.
            if control.should_save:
                self.saved = {step for step in self.saved
                              if (writer.checkpoints_dir / f"checkpoint-{step}").is_dir()} | {state.global_step}
                self.best_step = self._best()
                if self.best_step is not None:
                    state.best_global_step = self.best_step
            writer.update(step=state.global_step, max_steps=state.max_steps)

        def on_save(self, args, state, control, **kwargs):
            best = f"checkpoint-{self.best_step}" if self.best_step is not None else None
            writer.update(step=state.global_step, last_checkpoint=f"checkpoint-{state.global_step}",
                          best_checkpoint=best, best_score=best_score(writer, self.best_step))

        def on_train_end(self, args, state, control, **kwargs):
            # With save_total_limit, transformers may delete the last checkpoint at the end in favour
            # of the best one: last_checkpoint must name a directory that is still there.
            on_disk = writer.checkpoint_steps()
            if on_disk and f"checkpoint-{on_disk[-1]}" != writer.status.last_checkpoint:
                writer.update(last_checkpoint=f"checkpoint-{on_disk[-1]}")

    return SynapticCallback()


def record_best(writer: RunWriter) -> None:
    """The best checkpoint as every surface ranks it (monitor.rank_checkpoints, final/ included), written
    when the run ends, so `runs list` names the checkpoint the run view stars."""
    from synaptic_tui.monitor import rank_checkpoints
    from synaptic_tui.runs import list_checkpoints

    if not writer.main:
        return
    training = writer.config.get("training") or {}
    try:
        ranked = rank_checkpoints(writer.method, list_checkpoints(writer.run_dir), writer.history,
                                  training.get("save_steps") if isinstance(training, dict) else None)
        writer.update(best_checkpoint=ranked.best, best_score=ranked.score_of(ranked.best))
    except Exception as exc:  # noqa: BLE001 - the run's final state matters more than its ranking
        print(f"[synaptic] could not rank the checkpoints: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def run_training(description: str, train: Callable[[RunWriter, StopRequest, argparse.Namespace], str],
                 argv: list[str] | None = None) -> int:
    """Run `train` with the run-directory bookkeeping around it; returns the process exit code.

    `train` returns the engine it used; it ends early (without raising) when a stop was requested.
    """
    from synaptic_tui.run_lock import RunLocked

    args = parse_args(argv, description)
    # First of all: a cancel during start-up is a clean stop after the first step, not a dead process.
    stop = StopRequest().install()
    try:
        lock = hold_run_lock(args.run_dir)  # noqa: F841 - held open for the life of the process
    except RunLocked as exc:
        print(f"[synaptic] {exc}; this trainer did not start", file=sys.stderr, flush=True)
        return EXIT_LOCKED
    resume_step = int(args.resume_from.rsplit("-", 1)[1]) if args.resume_from else None
    if resume_step is not None and is_main_process():
        superseded = rewind(args.run_dir, resume_step)
        if superseded is not None:
            print(f"[synaptic] resuming from {args.resume_from}: the metrics and checkpoints after it moved "
                  f"to {superseded.name}/", flush=True)
    writer = RunWriter(args.run_dir, resume_step)
    stop.on_request = lambda: writer.update(stop_requested_at=utc_now())
    started = writer.status.started_at if args.resume_from else None
    writer.update(state="running", pid=os.getpid(), pgid=os.getpgrp(), started_at=started or utc_now(),
                  ended_at=None, exit_code=None, error=None, stop_requested_at=None)
    stop.record()  # a stop that came while the run directory was being opened
    try:
        engine = train(writer, stop, args)
    except BaseException as exc:  # every way out must leave a final state behind
        cancelled = isinstance(exc, KeyboardInterrupt)
        tail = "".join(traceback.format_exception(exc)[-8:]).strip()
        if isinstance(exc, UnhealthyTraining):
            tail = str(exc)  # our own verdict: the reason, not a traceback
        record_best(writer)
        writer.update(state="cancelled" if cancelled else "failed", ended_at=utc_now(),
                      exit_code=EXIT_OK if cancelled else EXIT_FAILED, error=None if cancelled else tail[-4000:])
        writer.close()
        if cancelled:
            print(f"[synaptic] {exc or 'interrupted'}; run cancelled: {writer.run_dir}", flush=True)
            return EXIT_OK
        if isinstance(exc, UnhealthyTraining):
            print(f"[synaptic] run failed: {exc}", file=sys.stderr, flush=True)
        else:
            traceback.print_exception(exc)
        return EXIT_FAILED
    final_state = "cancelled" if stop.requested else "succeeded"
    record_best(writer)
    writer.update(state=final_state, ended_at=utc_now(), exit_code=EXIT_OK, engine=engine)
    writer.close()
    print(f"[synaptic] run {final_state}: {writer.run_dir}", flush=True)
    return EXIT_OK


def load_training_rows(writer: RunWriter, method: str) -> list[dict[str, Any]]:
    """The run's dataset, checked row by row (trainers.data), summarised in train.log."""
    from trainers.data import load_rows

    dataset = writer.config.get("dataset") or {}
    rows, report = load_rows(dataset["path"], method, max_rows=dataset.get("max_rows"))
    balance = f": {report.desirable} desirable, {report.undesirable} undesirable" if method == "kto" else ""
    print(f"[synaptic] {report.rows} {method.upper()} rows from {report.path} ({report.tool_calls} tool calls){balance}",
          flush=True)
    for warning in report.warnings:
        print(f"[synaptic] warning: {warning}", flush=True)
    return rows


class RunTemplate:
    """The run's chat template: chosen once the tokenizer is loaded, recorded in status.json and train.log.

    Pass `prepare` to engine.load_for_training; it returns the ids of tokens the template added.
    """

    def __init__(self, writer: RunWriter, rows: list[dict[str, Any]]) -> None:
        self.writer, self.rows = writer, rows
        self.choice = None

    def prepare(self, tokenizer) -> list[int]:
        from trainers.chat_templates import choose_template, data_needs_tools, prepare_tokenizer

        setting = str((self.writer.config.get("model") or {}).get("chat_template") or "auto")
        self.choice = choose_template(tokenizer, setting, data_needs_tools(self.rows))
        added = prepare_tokenizer(tokenizer, self.choice)
        print(f"[synaptic] chat template: {self.choice.name} ({self.choice.reason})", flush=True)
        if added:
            print(f"[synaptic] added tokens the template needs: {', '.join(self.choice.added_tokens)} "
                  "(their embedding rows are trained)", flush=True)
        return added

    def record(self, mask: str | None) -> None:
        self.choice.mask = mask
        self.writer.update(chat_template=self.choice.to_dict())


def encode_sft_rows(tokenizer, rows: list[dict[str, Any]], assistant_only: bool) -> tuple[list[dict[str, list[int]]], str]:
    """Token ids and loss masks of every row, one strategy for the run (trainers.chat_templates.encode)."""
    from trainers.chat_templates import MaskError, mask_strategy, encode

    strategy, training, failed = ("all", None, []) if not assistant_only else mask_strategy(tokenizer, rows)
    if failed:
        index, why = failed[0]
        raise MaskError(f"row {index + 1}: the assistant-only loss mask cannot be derived from the chat template "
                        f"({why}); use model.chat_template: auto or a built-in, or training.completion_only_loss: false")
    encoded = []
    for row in rows:
        ids, mask, _ = encode(tokenizer, row["messages"], row.get("tools"), assistant_only=assistant_only,
                              strategy=None if strategy == "all" else strategy, training_template=training)
        encoded.append({"input_ids": ids, "assistant_masks": mask})
    return encoded, strategy


def split_dataset(writer: RunWriter, dataset):
    from trainers.datasets_hf import split

    seed = int((writer.config.get("training") or {}).get("seed", 42))
    return split(dataset, float((writer.config.get("dataset") or {}).get("test_size") or 0), seed)


def _learning_rate_from_schedule():
    """A callback that sets the resumed optimizer's learning rate from the schedule now in force.

    The optimizer state in a checkpoint keeps the rate its old schedule last set: 0 at the end of a
    finished run. Extended by `runs resume --steps N`, the first resumed step would be taken at that 0
    before the scheduler's next step corrected it.
    """
    from transformers import TrainerCallback

    class LearningRateFromSchedule(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if optimizer is None or not lambdas:
                return
            for group, rate, base in zip(optimizer.param_groups, lambdas, scheduler.base_lrs):
                group["lr"] = base * rate(scheduler.last_epoch)
            # What get_last_lr() reports, and so what the first resumed step logs (torch keeps no setter).
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    return LearningRateFromSchedule()


def fit(trainer, tokenizer, writer: RunWriter, stop: StopRequest, resume_from: str | None) -> None:
    """Train (resuming from a checkpoint if asked) and save the final adapter unless stopped early."""
    resume = str(writer.checkpoints_dir / resume_from) if resume_from else None
    if resume:
        # A checkpoint at the end of the schedule would train one step past it at learning rate 0.
        done = json.loads((Path(resume) / "trainer_state.json").read_text()).get("global_step")
        total = trainer.args.max_steps
        if isinstance(done, int) and total and total > 0 and done >= total:
            raise RuntimeError(f"{resume_from} is at step {done} of max_steps {total}: nothing left to train "
                               "(resume with `--steps N` to train N more steps)")
        print(f"[synaptic] resumed from {resume_from}: weights, optimizer, scheduler and RNG state", flush=True)
        trainer.add_callback(_learning_rate_from_schedule())
    trainer.train(resume_from_checkpoint=resume)
    if not stop.requested:
        trainer.save_model(str(writer.final_dir))
        tokenizer.save_pretrained(str(writer.final_dir))
