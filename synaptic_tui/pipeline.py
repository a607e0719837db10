"""Pipelines: sft -> kto -> select -> export -> upload -> eval as one detached, resumable job.

A pipeline lives in runs/<pipeline_id>/ beside the runs it starts:
`pipeline.yaml` (the config as given), `pipeline.json` (each stage's state,
run id, timings, result, error; written only by the runner, atomically),
`launch.json` and `pipeline.log`. Training stages are ordinary runs, so the
runs screen and run view show them like any other. The runner imports no ML
library: every stage is a subprocess.

Stopping the runner (SIGTERM) cancels the current stage cleanly; a runner that
dies leaves its stage's trainer running, and `resume` picks it up again.
Resume skips finished stages and resumes a stopped training run from its last
checkpoint instead of starting it over.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from synaptic_tui.runs import atomic_write_text, load_run, make_run_id, slugify, utc_now

FINISHED = ("succeeded", "failed", "cancelled")
RUNNER_VANISHED = "pipeline runner vanished without writing a final state (see pipeline.log)"


@dataclass
class StageState:
    name: str
    state: str = "pending"  # pending, running, succeeded, failed, cancelled, skipped
    run_id: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineState:
    pipeline_id: str
    state: str = "queued"
    stages: list[StageState] = field(default_factory=list)
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def stage(self, name: str) -> StageState | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineState:
        stages = [StageState(**s) for s in data.get("stages", [])]
        return cls(**{**data, "stages": stages})


def is_pipeline(path: Path) -> bool:
    return (Path(path) / "pipeline.json").is_file()


def read_pipeline(pipeline_dir: Path) -> PipelineState | None:
    try:
        return PipelineState.from_dict(json.loads((Path(pipeline_dir) / "pipeline.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_pipeline(pipeline_dir: Path, state: PipelineState) -> None:
    atomic_write_text(Path(pipeline_dir) / "pipeline.json", state.to_json())


def load_pipeline_config(pipeline_dir: Path):
    from synaptic_tui.config import load_config

    return load_config(Path(pipeline_dir) / "pipeline.yaml")


def create_pipeline(runs_dir: Path, config_path: Path | None, overrides: list[str] = ()) -> Path:
    """Validate the config (every stage, before anything runs) and write runs/<id>/, all or nothing."""
    import shutil
    import tempfile

    import yaml

    from synaptic_tui.config import ConfigError, ConfigProblem, config_to_dict, load_config

    config = load_config(config_path, overrides)
    if config.pipeline is None:
        raise ConfigError([ConfigProblem(str(config_path or "defaults"), None, "pipeline",
                                         "is required: a pipeline config has a pipeline: section of stages")])
    data = config_to_dict(config)
    # Keep the stage overrides exactly as written: they are merged onto the config at each stage.
    data["pipeline"] = config.pipeline.model_dump(mode="json", exclude_unset=True)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    slug = (config.output.run_name or slugify(Path(config.model.name).name or config.model.name))
    base_id = make_run_id("pipeline", slug)
    staging = Path(tempfile.mkdtemp(prefix=".creating-", dir=runs_dir))
    try:
        (staging / "pipeline.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        for attempt in range(1, 100):
            pipeline_id = base_id if attempt == 1 else f"{base_id}-{attempt}"
            state = PipelineState(pipeline_id, created_at=utc_now(),
                                  stages=[StageState(name) for name in config.pipeline.stages()])
            write_pipeline(staging, state)
            target = runs_dir / pipeline_id
            try:
                os.rename(staging, target)
            except OSError:
                if target.exists():
                    continue
                raise
            return target
        raise FileExistsError(f"could not find a free pipeline id for {base_id} in {runs_dir}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def launch_pipeline(pipeline_dir: Path):
    from synaptic_tui.jobs import launch_detached

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "synaptic_tui.pipeline", "run", str(pipeline_dir)]
    return launch_detached(command, Path(pipeline_dir), Path(pipeline_dir) / "pipeline.log", env)


def list_pipelines(runs_dir: Path) -> list[tuple[Path, PipelineState]]:
    """Every pipeline under the runs dir, newest first, with its real state."""
    found = []
    try:
        entries = sorted(Path(runs_dir).iterdir(), reverse=True)
    except OSError:
        return []
    for path in entries:
        if path.is_dir() and not path.name.startswith(".") and is_pipeline(path):
            state = reconcile_pipeline(path)
            if state is not None:
                found.append((path, state))
    return found


def find_pipeline(runs_dir: Path, ref: str) -> Path:
    candidate = Path(ref).expanduser()
    if is_pipeline(candidate):
        return candidate
    matches = [p for p, _ in list_pipelines(runs_dir) if p.name == ref or p.name.startswith(ref) or ref in p.name]
    exact = [p for p in matches if p.name == ref]
    if exact or len(matches) == 1:
        return (exact or matches)[0]
    if not matches:
        raise LookupError(f"no pipeline {ref!r} in {runs_dir}")
    raise LookupError(f"{ref!r} matches {len(matches)} pipelines: {', '.join(p.name for p in matches[:5])}")


def reconcile_pipeline(pipeline_dir: Path) -> PipelineState | None:
    """The pipeline's real state: one left running by a runner that died is shown failed (and resumable)."""
    from synaptic_tui.jobs import trainer_alive

    state = read_pipeline(pipeline_dir)
    if state is None or state.finished or state.state == "queued" and not (Path(pipeline_dir) / "launch.json").exists():
        return state
    if trainer_alive(Path(pipeline_dir)) is not False:
        return state
    state = read_pipeline(pipeline_dir) or state
    if not state.finished:
        state.state, state.error, state.ended_at = "failed", state.error or RUNNER_VANISHED, utc_now()
        for stage in state.stages:
            if stage.state == "running":
                stage.state, stage.error = "failed", RUNNER_VANISHED
        write_pipeline(pipeline_dir, state)
    return state


def cancel_pipeline(pipeline_dir: Path) -> bool:
    """Ask the runner to stop: it cancels the current stage (a trainer saves a checkpoint) and ends cancelled."""
    from synaptic_tui.jobs import read_launch, trainer_alive

    record = read_launch(Path(pipeline_dir))
    if record is None or trainer_alive(Path(pipeline_dir)) is not True:
        return False
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def resume_pipeline(pipeline_dir: Path):
    """Start the runner again; it skips finished stages."""
    state = reconcile_pipeline(pipeline_dir)
    if state is None:
        raise LookupError(f"{pipeline_dir} is not a pipeline")
    if state.state == "running":
        raise ValueError(f"{Path(pipeline_dir).name} is running")
    if state.state == "succeeded":
        raise ValueError(f"{Path(pipeline_dir).name} already succeeded")
    # Queued again before the runner starts, so a waiter never reads the old final state; the old
    # launch record goes first, so the dead runner it names cannot make this look failed.
    (Path(pipeline_dir) / "launch.json").unlink(missing_ok=True)
    state.state, state.error, state.ended_at = "queued", None, None
    write_pipeline(pipeline_dir, state)
    return launch_pipeline(pipeline_dir)


# --- the runner ---------------------------------------------------------------------------


class Stopped(Exception):
    """The runner was asked to stop while a stage ran."""


class StageFailed(Exception):
    pass


class Runner:
    def __init__(self, pipeline_dir: Path, poll_seconds: float = 1.0) -> None:
        self.dir = Path(pipeline_dir)
        self.runs_dir = self.dir.parent
        self.config = load_pipeline_config(self.dir)
        self.state = read_pipeline(self.dir)
        self.poll_seconds = poll_seconds
        self.stopping = False

    def say(self, message: str) -> None:
        from synaptic_tui.redact import redact_text

        print(f"[pipeline] {time.strftime('%H:%M:%S')} {redact_text(message)}", flush=True)

    def save(self) -> None:
        write_pipeline(self.dir, self.state)

    def request_stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        state = self.state
        state.state, state.started_at, state.ended_at, state.error = "running", state.started_at or utc_now(), None, None
        self.save()
        for stage in state.stages:
            if stage.state in ("succeeded", "skipped"):
                self.say(f"{stage.name}: already {stage.state}")
                continue
            stage.state, stage.started_at, stage.ended_at, stage.error = "running", utc_now(), None, None
            self.save()
            self.say(f"{stage.name}: started")
            try:
                outcome = STAGES[stage.name](self, stage)
            except Stopped:
                return self.finish(stage, "cancelled", "stopped on request")
            except StageFailed as exc:
                return self.finish(stage, "failed", str(exc))
            except Exception as exc:  # noqa: BLE001 - any stage crash ends the pipeline with its reason
                self.say("".join(traceback.format_exception(exc)).rstrip())
                return self.finish(stage, "failed", f"{type(exc).__name__}: {exc}")
            stage.state, stage.ended_at = outcome, utc_now()
            self.save()
            self.say(f"{stage.name}: {outcome} {json.dumps(stage.result)}")
            if self.stopping:
                state.state, state.ended_at = "cancelled", utc_now()
                self.save()
                return 0
        state.state, state.ended_at = "succeeded", utc_now()
        self.save()
        self.say("succeeded")
        return 0

    def finish(self, stage: StageState, outcome: str, error: str) -> int:
        from synaptic_tui.redact import redact_text

        error = redact_text(error)
        stage.state, stage.ended_at, stage.error = outcome, utc_now(), error
        self.state.state, self.state.ended_at = outcome, utc_now()
        self.state.error = f"{stage.name}: {error}"
        self.save()
        self.say(f"{stage.name}: {outcome}: {error}")
        return 0 if outcome == "cancelled" else 1

    # --- helpers shared by stages ---------------------------------------------------------

    def wait_for_run(self, run_dir: Path) -> str:
        """Follow a training run to its end; a stop request cancels it (it saves a checkpoint first)."""
        from synaptic_tui.jobs import cancel_run, reconcile

        cancelled = False
        while True:
            run = load_run(run_dir)
            status = reconcile(run) if run is not None else None
            if status is not None and status.finished:
                return status.state
            if self.stopping and not cancelled and run is not None:
                self.say(f"stopping {run_dir.name}: it saves a checkpoint first")
                cancelled = cancel_run(run) or True
            time.sleep(self.poll_seconds)

    def training_run(self, name: str) -> Path | None:
        stage = self.state.stage(name)
        return self.runs_dir / stage.run_id if stage is not None and stage.run_id else None

    def last_training_run(self) -> tuple[str, Path]:
        for name in ("kto", "sft"):
            run_dir = self.training_run(name)
            if run_dir is not None:
                return name, run_dir
        raise StageFailed("no training stage has run")


def train_stage(runner: Runner, stage: StageState) -> str:
    from synaptic_tui.config import TrainingConfig, stage_config
    from synaptic_tui.jobs import ensure_embedded_model, launch_training
    from synaptic_tui.runs import create_run, read_status

    if stage.run_id and (runner.runs_dir / stage.run_id).is_dir():
        # Resuming the pipeline: finish this stage's run, never start it over.
        run_dir = runner.runs_dir / stage.run_id
        status = read_status(run_dir)
        run = load_run(run_dir)
        if status is not None and status.state == "succeeded":
            pass
        elif status is not None and status.state in ("queued", "running") and _alive(run_dir):
            runner.say(f"{stage.name}: following {run_dir.name}, still training")
        else:
            from synaptic_tui.jobs import LaunchRefused, plan_resume, resume_run
            from synaptic_tui.run_lock import RunLocked

            checkpoints = [c for c in run.checkpoints() if not c.is_final] if run else []
            try:
                if checkpoints:
                    plan = plan_resume(run)  # refuses a run with nothing left to train, or unreadable
                    runner.say(f"{stage.name}: resuming {run_dir.name} from {plan.checkpoint}")
                    resume_run(run, plan)
                else:
                    runner.say(f"{stage.name}: resuming {run_dir.name} from the start")
                    launch_training(run_dir)
            except (LaunchRefused, RunLocked) as exc:
                raise StageFailed(str(exc)) from None
    else:
        model = None
        overrides = getattr(runner.config.pipeline, stage.name) or {}
        if stage.name == "kto" and overrides.get("start_from", "sft" if runner.config.pipeline.sft else None) == "sft":
            model = merged_sft_model(runner)
        config = stage_config(runner.config, stage.name, model)
        config = TrainingConfig.model_validate(config).model_dump(mode="json", exclude={"pipeline", "legacy_ignored"})
        ensure_embedded_model(config)
        slug = f"{runner.state.pipeline_id.split('-pipeline-', 1)[-1]}"
        run_dir = create_run(runner.runs_dir, config, stage.name, slugify(slug))
        stage.run_id = run_dir.name
        runner.save()
        launch_training(run_dir)
    outcome = runner.wait_for_run(run_dir)
    status = read_status(run_dir)
    stage.result = {"run_id": run_dir.name, "best_checkpoint": status.extra.get("best_checkpoint") if status else None,
                    "steps": status.step if status else None}
    if outcome == "cancelled" or runner.stopping:
        raise Stopped()
    if outcome != "succeeded":
        error = (status.error or "").strip().splitlines()[-1:] if status else []
        raise StageFailed(f"run {run_dir.name} {outcome}" + (f": {error[0]}" if error else ""))
    return "succeeded"


def _alive(run_dir: Path) -> bool:
    from synaptic_tui.jobs import trainer_alive

    return trainer_alive(run_dir) is True


def resolve_checkpoint(run_dir: Path, wanted: str) -> str:
    """best / final / checkpoint-N of a finished run -> the checkpoint directory name."""
    from synaptic_tui.exporting import ExportError
    from synaptic_tui.exporting import resolve_checkpoint as resolve

    run = load_run(run_dir)
    if run is None:
        raise StageFailed(f"{run_dir} is not a run directory")
    try:
        return resolve(run, wanted)
    except ExportError as exc:
        raise StageFailed(str(exc)) from None


def select_stage(runner: Runner, stage: StageState) -> str:
    name, run_dir = runner.last_training_run()
    checkpoint = resolve_checkpoint(run_dir, runner.config.pipeline.select.checkpoint)
    stage.result = {"run_id": run_dir.name, "checkpoint": checkpoint, "from_stage": name}
    return "succeeded"


def export_checkpoint(runner: Runner, run_dir: Path, checkpoint: str, formats: list[str]) -> dict[str, str]:
    """Export (or find already exported) formats of a checkpoint; returns format -> export directory."""
    import asyncio

    from synaptic_tui.exporting import ExportRequest, export_dir, read_export, run_export_async

    paths = {fmt: export_dir(run_dir, checkpoint, fmt) for fmt in formats}
    missing = [fmt for fmt, path in paths.items() if read_export(path) is None]
    if missing:
        runner.say(f"exporting {', '.join(missing)} of {run_dir.name}/{checkpoint}")
        request = ExportRequest(load_run(run_dir), checkpoint=checkpoint, formats=missing)

        async def go():
            task = asyncio.ensure_future(run_export_async(
                request, on_event=lambda e: e.get("event") == "step" and runner.say(f"export: {e.get('message')}")))
            while not task.done():
                if runner.stopping:
                    task.cancel()  # terminates the export process; it keeps no half-written directory
                await asyncio.wait({task}, timeout=0.5)
            return task.result()

        try:
            result = asyncio.run(go())
        except asyncio.CancelledError:
            raise Stopped() from None
        if result.exit_code != 0:
            raise StageFailed(f"export of {run_dir.name}/{checkpoint} failed: {result.error}")
    return {fmt: str(path) for fmt, path in paths.items()}


def merged_sft_model(runner: Runner) -> str:
    """KTO starts from the SFT stage's best checkpoint merged into its base model."""
    sft_run = runner.training_run("sft")
    if sft_run is None:
        raise StageFailed("the kto stage starts from the sft stage, which has no run")
    checkpoint = resolve_checkpoint(sft_run, "best")
    merged = export_checkpoint(runner, sft_run, checkpoint, ["merged-16bit"])["merged-16bit"]
    runner.state.stage("kto").result["start_from"] = merged
    runner.save()
    return merged


def export_stage(runner: Runner, stage: StageState) -> str:
    select = runner.state.stage("select")
    if select is not None and select.result.get("checkpoint"):
        run_dir, checkpoint = runner.runs_dir / select.result["run_id"], select.result["checkpoint"]
    else:
        _, run_dir = runner.last_training_run()
        checkpoint = resolve_checkpoint(run_dir, "best")
    paths = export_checkpoint(runner, run_dir, checkpoint, list(runner.config.pipeline.export.formats))
    stage.result = {"run_id": run_dir.name, "checkpoint": checkpoint, "exports": list(paths), "paths": paths}
    return "succeeded"


def upload_stage(runner: Runner, stage: StageState) -> str:
    """Upload what the export stage wrote; without a token the stage is skipped with a note, not failed."""
    from synaptic_tui.hf_token import find_hf_token
    from synaptic_tui.upload import UploadError, plan_upload, upload

    export = runner.state.stage("export")
    if export is None or not export.result.get("exports"):
        raise StageFailed("the upload stage uploads what the export stage wrote, and it wrote nothing")
    token, _ = find_hf_token()
    settings = runner.config.pipeline.upload
    if not token:
        stage.result = {"repo_id": settings.repo_id,
                        "note": "no Hugging Face token (HF_TOKEN, ./.env or `hf auth login`): upload skipped"}
        runner.say(f"upload: {stage.result['note']}")
        return "skipped"
    run = load_run(runner.runs_dir / export.result["run_id"])
    try:
        plan = plan_upload(run, export.result["checkpoint"], list(export.result["exports"]), settings.repo_id,
                           private=settings.private)
        commits = upload(plan, runner.say)
    except UploadError as exc:
        raise StageFailed(str(exc)) from None
    stage.result = {"repo_id": plan.repo_id, "url": plan.repo_url, "private": plan.private, "commits": commits,
                    "formats": [i.fmt for i in plan.items]}
    return "succeeded"


def _run_eval_until_stopped(runner: Runner, eval_dir: Path, url: str | None = None) -> dict[str, Any]:
    """Run (or finish) an eval; a stop request cancels it, leaving it resumable."""
    import asyncio

    from evaluator.runner import run_eval

    async def go() -> dict[str, Any]:
        task = asyncio.ensure_future(run_eval(eval_dir, url=url))
        while not task.done():
            if runner.stopping:
                task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        return task.result()

    try:
        return asyncio.run(go())
    except asyncio.CancelledError:
        raise Stopped() from None


def _until_stopped(runner: Runner, coroutine) -> Any:
    """Run a coroutine; a stop request cancels it."""
    import asyncio

    async def go():
        task = asyncio.ensure_future(coroutine)
        while not task.done():
            if runner.stopping:
                task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        return task.result()

    try:
        return asyncio.run(go())
    except asyncio.CancelledError:
        raise Stopped() from None


def _evaluate(runner: Runner, key: str, target_ref: str | None, root: Path) -> dict[str, Any]:
    """One eval of the pipeline (`key` is eval or baseline), resumed where a stopped pipeline left it.
    With backend local, `target_ref` (RUN:CHECKPOINT, RUN:base or a model) is served by `synaptic-tui serve`'s
    code: the fastest engine here, a server already serving it reused, one started for the eval stopped after."""
    from evaluator.clients import default_url
    from evaluator.prompts import load_prompt_set
    from evaluator.runner import create_eval, load_eval, new_settings

    from synaptic_tui.redact import redact_url

    ev = runner.config.pipeline.eval
    stage = runner.state.stage("eval")
    existing = stage.result.get(f"{key}_dir")
    if existing and Path(existing).is_dir() and load_eval(existing).state == "completed":
        return json.loads((Path(existing) / "summary.json").read_text())
    backend = "openai" if ev.backend == "local" else ev.backend

    def run(url: str, model_id: str, tool_format: str | None = None) -> dict[str, Any]:
        import asyncio

        from evaluator.runner import EvalCannotRun, preflight

        prompt_set = load_prompt_set(ev.prompt_set or runner.config.eval.prompt_set)
        settings = new_settings(backend, model_id, prompt_set, url=url, tags=ev.tags, limit=ev.limit,
                                temperature=ev.temperature, max_tokens=ev.max_tokens, concurrency=ev.concurrency,
                                tool_format=tool_format)
        try:  # a server that is down or lacks the model fails the stage, as `synaptic-tui eval` exits 1
            for warning in asyncio.run(preflight(settings)):
                runner.say(f"eval: warning: {warning}")
        except EvalCannotRun as exc:
            raise StageFailed(str(exc)) from None
        if existing and Path(existing).is_dir():
            eval_dir = Path(existing)
            runner.say(f"eval: finishing {eval_dir.name}")
        else:
            eval_dir = create_eval(settings, root)
            stage.result[f"{key}_dir"] = str(eval_dir)
            runner.save()
        summary = _run_eval_until_stopped(runner, eval_dir, url=url)
        if summary.get("total") and summary.get("errors") == summary["total"]:
            raise StageFailed(f"no case got an answer from {redact_url(url)} (see {eval_dir / 'report.md'})")
        return summary

    if ev.backend != "local":
        from synaptic_tui.redact import expand_url

        try:  # credentials come as ${VAR} references, filled from the runner's environment, never stored
            url = expand_url(ev.url or runner.config.eval.url or default_url(backend))
        except ValueError as exc:
            raise StageFailed(f"eval.url: {exc}") from None
        return run(url, ev.model or runner.config.eval.model)
    from synaptic_tui.servers import ServeError
    from synaptic_tui.servers.launch import ensure_server, stop_server
    from synaptic_tui.servers.targets import TargetError, resolve_target

    try:
        target = resolve_target(target_ref, runner.runs_dir)
        server, started = _until_stopped(runner, ensure_server(
            target, runner.runs_dir, say=lambda message: runner.say(f"eval: {message}")))
    except (ServeError, TargetError) as exc:
        raise StageFailed(str(exc)) from None
    runner.say(f"eval: serving {target.label} with {server.engine} at {server.url}")
    try:
        return run(server.url, server.model_id, target.tool_format)
    finally:
        if started:
            stop_server(server)


def eval_stage(runner: Runner, stage: StageState) -> str:
    from evaluator.runner import compare_evals

    trained = runner.config.pipeline.sft is not None or runner.config.pipeline.kto is not None
    base_model = Path(runner.config.model.name)
    local = runner.config.pipeline.eval.backend == "local"
    if trained:
        _, run_dir = runner.last_training_run()
        root = run_dir / "evals"
        chosen = next((s.result for s in (runner.state.stage("export"), runner.state.stage("select"))
                       if s is not None and s.result.get("checkpoint")), {})
        if chosen:
            run_dir = runner.runs_dir / chosen["run_id"]
        checkpoint = chosen.get("checkpoint") or resolve_checkpoint(run_dir, "best")
        target = f"{run_dir}:{checkpoint}" if local else None
    else:
        root, target = runner.dir / "evals", str(_demo_resolved(base_model))
    summary = _evaluate(runner, "eval", target, root)
    stage.result.update(pass_rate=summary.get("pass_rate"), passed=summary.get("passed"), total=summary.get("total"))
    runner.save()
    if runner.config.pipeline.eval.baseline and trained:
        if not local:
            runner.say("eval: baseline skipped: only backend local can serve the base model itself")
        else:
            # The pipeline's base model, not the run's: a KTO run's base is the SFT stage's merge.
            baseline = _evaluate(runner, "baseline", str(_demo_resolved(base_model)), runner.dir / "evals")
            comparison = compare_evals(stage.result["baseline_dir"], stage.result["eval_dir"])
            atomic_write_text(runner.dir / "baseline_comparison.json", json.dumps(comparison, indent=2) + "\n")
            stage.result.update(baseline_pass_rate=baseline.get("pass_rate"),
                                delta=comparison["overall"]["delta"],
                                comparison=str(runner.dir / "baseline_comparison.json"))
    return "succeeded"


def _demo_resolved(model: Path) -> Path:
    from synaptic_tui.paths import resolve_model_name

    return Path(resolve_model_name(str(model)))


STAGES: dict[str, Callable[[Runner, StageState], str]] = {
    "sft": train_stage,
    "kto": train_stage,
    "select": select_stage,
    "export": export_stage,
    "upload": upload_stage,
    "eval": eval_stage,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synaptic_tui.pipeline", description="run a pipeline's stages")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or continue) the pipeline in DIR; normally started detached")
    run.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    return Runner(args.dir).run()


if __name__ == "__main__":
    sys.exit(main())
