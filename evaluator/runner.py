"""Running an eval: its directory, concurrent cases, results as they finish, resume, listing and comparing.

An eval directory holds eval.json (settings and state), results.jsonl (one line
per finished case, appended and flushed at once; one per try with --repeats), and
at the end summary.json and report.md. Resuming re-reads results.jsonl and runs
only the cases missing from it, so a killed eval loses at most the cases that were
in flight; the judge's answers are cached beside the evals, so they are not asked again.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from evaluator.clients import OPENAI_URL, BackendError, OllamaClient, OpenAIClient, make_client, start_hint
from evaluator.behavior import overall_verdict, part_verdict, score_behavior
from evaluator.prompts import Case, PromptSet, load_prompt_set, load_tools_file, select_cases
from evaluator.report import render_report
from evaluator.scoring import FAIL, aggregate, combine_tries, score_case
from synaptic_tui.redact import MASK, redact_text, redact_url
from synaptic_tui.runs import atomic_write_text, slugify, utc_now

EVALS_ENV = "SYNAPTIC_EVALS_DIR"
# The real URL of an eval the app launches detached, when it has credentials (they are never stored).
URL_ENV = "SYNAPTIC_EVAL_URL"
DEFAULT_CONCURRENCY = 4
# A per-case deadline covers the whole answer (and its retries): a server trickling a token a second never
# trips the per-read timeout. Derived from max tokens, assuming at least this many tokens a second.
SLOWEST_TOKENS_PER_SECOND = 2.0
ASSUMED_MAX_TOKENS = 1024  # when max tokens is left to the server
# Errors worth asking again on resume: the server was down, slow or overloaded, not the answer wrong.
TRANSIENT_KINDS = ("connect", "timeout", "truncated", "deadline")


class EvalCannotRun(Exception):
    """The eval could not start: server down, model missing. Nothing was run."""


@dataclass
class EvalSettings:
    backend: str
    url: str
    model: str
    prompt_set: str
    prompt_set_sha256: str = ""
    case_ids: list[str] = field(default_factory=list)  # the selection, fixed at start so resume runs the same set
    tags: list[str] = field(default_factory=list)
    limit: int | None = None
    shuffle: bool = False
    seed: int = 0
    temperature: float | None = 0.0
    top_p: float | None = None
    max_tokens: int | None = None
    stream: bool = True
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = 120.0
    retries: int = 3
    case_timeout: float | None = None  # seconds for one case, retries included; None: derived (case_deadline)
    run_id: str | None = None
    checkpoint: str | None = None  # the run's checkpoint the served model was exported from, when known
    tools_file: str | None = None  # --tools: offered to cases that list none, and their arguments checked
    tools_sha256: str = ""
    no_tools: bool = False  # --no-tools: send none, as the original did (arguments are still checked)
    tool_format: str | None = None  # the text format tool calls are read in; None reads every format
    judge_url: str | None = None  # an OpenAI-compatible server; with judge_model, it decides judged checks
    judge_model: str | None = None
    repeats: int = 1  # tries per case (temperature above 0)
    # A model synaptic-tui serves itself (`--serve`): RUN:CHECKPOINT or a model, resolved; the server is
    # started or reused when the eval runs, and url/model are then its own.
    serve: str | None = None
    engine: str | None = None
    runs_dir: str | None = None  # where that target's run and the servers live

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalSettings:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def case_deadline(self) -> float:
        """Wall-clock seconds one case may take: --case-timeout, else the silent-server timeout plus the
        time max tokens take at the slowest pace a server is waited for."""
        if self.case_timeout:
            return float(self.case_timeout)
        return float(self.timeout) + (self.max_tokens or ASSUMED_MAX_TOKENS) / SLOWEST_TOKENS_PER_SECOND

    def stored(self) -> dict[str, Any]:
        """The settings as eval.json keeps them: the URL without credentials."""
        return {**asdict(self), "url": redact_url(self.url),
                "judge_url": redact_url(self.judge_url) if self.judge_url else None}


def is_transient(record: dict[str, Any]) -> bool:
    """A case that failed on the way (server down, slow, overloaded), not on its answer."""
    error = record.get("error")
    if not isinstance(error, dict):
        return False
    status = error.get("status")
    return error.get("kind") in TRANSIENT_KINDS or (
        error.get("kind") == "http" and isinstance(status, int) and (status >= 500 or status == 429))


@dataclass
class EvalInfo:
    """One eval as a list shows it."""

    eval_id: str
    path: Path
    state: str
    settings: EvalSettings
    started_at: str | None
    ended_at: str | None
    done: int
    total: int
    pass_rate: float | None
    error: str | None = None


def evals_root(evals_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where standalone evals go: --evals-dir, else $SYNAPTIC_EVALS_DIR, else ./evals."""
    return Path(evals_dir or os.environ.get(EVALS_ENV) or "evals").expanduser().resolve()


def make_eval_id(model: str, now: datetime | None = None) -> str:
    now = now or datetime.now()
    return f"{now:%Y%m%d-%H%M%S}-{slugify(model)}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def record_key(case_id: Any, attempt: Any = 1) -> str:
    """A result's key: the case id, with the try after '#' from the second try on."""
    return str(case_id) if not isinstance(attempt, int) or attempt <= 1 else f"{case_id}#{attempt}"


def read_results(eval_dir: Path) -> list[dict[str, Any]]:
    """Finished case records (one per case and try); a last line cut short by a kill is skipped."""
    path = Path(eval_dir) / "results.jsonl"
    records: dict[str, dict[str, Any]] = {}
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "id" in record:
                    records[record_key(record["id"], record.get("try"))] = record
    except FileNotFoundError:
        pass
    return list(records.values())


def _drop_partial_line(path: Path) -> None:
    """Cut a results.jsonl back to its last complete line, so the next append starts on a fresh line."""
    try:
        with path.open("rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def _write_meta(eval_dir: Path, meta: dict[str, Any]) -> None:
    settings = meta.get("settings")
    if isinstance(settings, dict) and isinstance(settings.get("url"), str):
        meta = {**meta, "settings": {**settings, "url": redact_url(settings["url"])}}
    if isinstance(meta.get("error"), str):
        meta = {**meta, "error": redact_text(meta["error"])}
    atomic_write_text(eval_dir / "eval.json", json.dumps(meta, indent=2) + "\n")


def _alive(meta: dict[str, Any], eval_dir: Path) -> bool | None:
    from synaptic_tui.jobs import process_start_marker, trainer_alive

    pid = meta.get("pid")
    if not isinstance(pid, int):
        # Launched detached by the app and not yet (or never) running: the launcher's record says who to watch.
        return trainer_alive(eval_dir)
    if meta.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    marker = process_start_marker(pid)
    return not (meta.get("start_marker") and marker and marker != meta["start_marker"])


def load_eval(eval_dir: str | Path) -> EvalInfo:
    """An eval's settings, state and progress. A `running` eval whose process is gone reads `interrupted`."""
    eval_dir = Path(eval_dir)
    meta = _read_json(eval_dir / "eval.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
        raise LookupError(f"{eval_dir} is not an eval directory (no readable eval.json)")
    state = meta.get("state", "running")
    if state == "running" and _alive(meta, eval_dir) is False:
        state = "interrupted"
    settings = EvalSettings.from_dict(meta["settings"])
    summary = _read_json(eval_dir / "summary.json")
    results = read_results(eval_dir)
    pass_rate = summary.get("pass_rate") if isinstance(summary, dict) else None
    return EvalInfo(eval_dir.name, eval_dir, state, settings, meta.get("started_at"), meta.get("ended_at"),
                    len(results), len(settings.case_ids) * max(settings.repeats, 1), pass_rate, meta.get("error"))


def list_evals(root: str | Path) -> list[EvalInfo]:
    """Every eval under a root (an evals dir, or a run's evals/), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and not path.name.startswith(".") and (path / "eval.json").is_file():
            try:
                found.append(load_eval(path))
            except LookupError:
                continue
    return sorted(found, key=lambda e: e.eval_id, reverse=True)


def find_eval(ref: str, roots: list[Path]) -> Path:
    """An eval by path, id or unique id prefix, looked up in the given roots."""
    candidate = Path(ref).expanduser()
    if (candidate / "eval.json").is_file():
        return candidate.resolve()
    matches = [e.path for root in roots for e in list_evals(root) if e.eval_id == ref]
    if not matches:
        matches = [e.path for root in roots for e in list_evals(root) if e.eval_id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    where = ", ".join(str(r) for r in roots)
    if not matches:
        raise LookupError(f"no eval {ref!r} in {where}")
    raise LookupError(f"{ref!r} matches {len(matches)} evals in {where}: {', '.join(p.name for p in matches[:5])}")


# --- starting --------------------------------------------------------------------


def _client_for(settings: EvalSettings) -> OllamaClient | OpenAIClient:
    if MASK in settings.url:
        raise EvalCannotRun(f"the URL of this eval had credentials, which are never stored ({settings.url}); "
                            "pass --url again to resume it")
    return make_client(settings.backend, settings.url, timeout=settings.timeout, retries=settings.retries,
                       max_connections=max(settings.concurrency, 1))


async def preflight(settings: EvalSettings, client: OllamaClient | OpenAIClient | None = None) -> list[str]:
    """Raise EvalCannotRun when the server is down or lacks the model; return warnings otherwise."""
    own = client is None
    client = client or _client_for(settings)
    try:
        reach = await client.check()
    finally:
        if own:
            await client.aclose()
    name = "Ollama" if settings.backend == "ollama" else "the OpenAI-compatible server"
    shown = redact_url(settings.url)
    if not reach.reachable:
        raise EvalCannotRun(f"{name} is not reachable at {shown}: {reach.error}\n"
                            f"  {start_hint(settings.backend)}")
    if reach.models is None:
        return [f"could not read the model list ({reach.error}); trying model {settings.model!r} anyway"]
    if settings.model not in reach.models and not (
        settings.backend == "ollama" and f"{settings.model}:latest" in reach.models
    ):
        listed = ", ".join(reach.models[:10]) or "none"
        hint = f"; `ollama pull {settings.model}`" if settings.backend == "ollama" else ""
        raise EvalCannotRun(f"model {settings.model!r} is not served at {shown} (it lists: {listed}){hint}")
    return await _judge_preflight(settings)


async def _judge_preflight(settings: EvalSettings) -> list[str]:
    if not settings.judge_model:
        return []
    client = _judge_client(settings)
    judge_shown = redact_url(settings.judge_url)
    try:
        reach = await client.check()
    finally:
        await client.aclose()
    if not reach.reachable:
        raise EvalCannotRun(f"the judge is not reachable at {judge_shown}: {redact_text(str(reach.error))}")
    if reach.models is None:
        return [f"could not read the judge's model list ({redact_text(str(reach.error))}); trying "
                f"{settings.judge_model!r} anyway"]
    if settings.judge_model not in reach.models:
        listed = ", ".join(reach.models[:10]) or "none"
        raise EvalCannotRun(f"judge model {settings.judge_model!r} is not served at {judge_shown} "
                            f"(it lists: {listed})")
    return []


def _judge_client(settings: EvalSettings) -> OpenAIClient:
    from evaluator.judge import API_KEY_ENV

    return OpenAIClient(settings.judge_url or OPENAI_URL, timeout=settings.timeout, retries=settings.retries,
                        max_connections=max(settings.concurrency, 1), api_key=os.environ.get(API_KEY_ENV))


async def serve_for_eval(settings: EvalSettings, say: Callable[[str], Any] | None = None) -> None:
    """Start (or reuse) the server of `settings.serve` and point the eval at it."""
    from synaptic_tui.servers import ServeError
    from synaptic_tui.servers.launch import ensure_server
    from synaptic_tui.servers.targets import TargetError, resolve_target

    runs_dir = Path(settings.runs_dir or "runs")
    try:
        target = resolve_target(settings.serve, runs_dir)
        server, _ = await ensure_server(target, runs_dir, engine=settings.engine, timeout=settings.timeout * 10,
                                        say=say)
    except (ServeError, TargetError) as exc:
        raise EvalCannotRun(str(exc)) from None
    settings.backend, settings.url, settings.model = "openai", server.url, server.model_id
    settings.tool_format = settings.tool_format or target.tool_format


def save_settings(eval_dir: Path, settings: EvalSettings) -> None:
    """Record settings that changed once the eval began (the server `--serve` started and its model id)."""
    meta = _read_json(Path(eval_dir) / "eval.json")
    if isinstance(meta, dict):
        meta["settings"] = asdict(settings)
        _write_meta(Path(eval_dir), meta)


def new_settings(backend: str, model: str, prompt_set: PromptSet, *, url: str | None = None,
                 tags: list[str] | None = None, limit: int | None = None, shuffle: bool = False, seed: int = 0,
                 **options: Any) -> EvalSettings:
    """Settings for a new eval, with the case selection fixed now."""
    from evaluator.clients import default_url

    cases = select_cases(prompt_set.cases, tags=tags or (), limit=limit, shuffle=shuffle, seed=seed)
    return EvalSettings(backend=backend, url=url or default_url(backend), model=model,
                        prompt_set=str(Path(prompt_set.path).resolve()), prompt_set_sha256=prompt_set.sha256,
                        case_ids=[c.id for c in cases], tags=list(tags or []), limit=limit, shuffle=shuffle,
                        seed=seed, **options)


def create_eval(settings: EvalSettings, root: Path) -> Path:
    """The eval directory with its eval.json (state `running`); the id gets a suffix if the second is taken."""
    root.mkdir(parents=True, exist_ok=True)
    base = make_eval_id(settings.model)
    for n in range(1, 1000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise RuntimeError(f"no free eval id under {root} for {base}")
    _write_meta(path, {"eval_id": path.name, "state": "running", "settings": settings.stored(),
                       "started_at": utc_now(), "ended_at": None})
    return path


# --- running ---------------------------------------------------------------------


def asks_tool_calls(case: Case) -> bool:
    return case.expected_tools is not None or bool(case.expected_context)


def asks_behavior(case: Case) -> bool:
    return bool(case.expected_response_type or case.behavior_expectations or case.anti_patterns)


async def run_case(client: OllamaClient | OpenAIClient, settings: EvalSettings, case: Case, *,
                   tools: list[dict[str, Any]] | None = None, judge: Any = None) -> dict[str, Any]:
    """Ask one case and score it; a failed request becomes the case's recorded error.

    `tools` come from --tools FILE: offered when the case lists none, and its arguments checked
    against them; `judge` (evaluator.judge.Judge) decides the behaviour checks that need reading.
    """
    record: dict[str, Any] = {
        "id": case.id, "tags": case.tags, "expected_tools": case.expected_tools,
        "expected_context": case.context_for_record(), "expected_response_type": case.expected_response_type,
        "notes": case.notes, "prompt": case.messages(), "started_at": utc_now(),
    }
    offered = None if settings.no_tools else (case.tools or tools or None)
    started = time.perf_counter()
    deadline = settings.case_deadline
    try:
        result = await asyncio.wait_for(
            client.chat(settings.model, case.messages(), offered, temperature=settings.temperature,
                        top_p=settings.top_p, max_tokens=settings.max_tokens, stream=settings.stream), deadline)
    except (BackendError, asyncio.TimeoutError) as exc:
        if isinstance(exc, BackendError):
            error = {"kind": exc.kind, "message": str(exc), "status": exc.status}
        else:
            error = {"kind": "deadline", "status": None,
                     "message": f"no complete answer within the case deadline of {deadline:g} s (--case-timeout)"}
        # No answer fails every part the case asks for; it never counts as not scored.
        record.update(response=None, raw=None, calls=[], checks=[], behavior=[], passed=False,
                      reasons=[error["message"]], verdict=FAIL,
                      tool_verdict=FAIL if asks_tool_calls(case) else None,
                      behavior_verdict=FAIL if asks_behavior(case) else None,
                      error=error, latency_s=round(time.perf_counter() - started, 4))
        return record
    score = score_case(case, result.content, result.tool_calls, tools=tools, format=settings.tool_format)
    behaviour = [c.to_dict() for c in await score_behavior(case, score.response, judge)]
    checks = [c.to_dict() for c in score.checks]
    tool_verdict, behavior_verdict = part_verdict(checks), part_verdict(behaviour)
    verdict = overall_verdict(tool_verdict, behavior_verdict)
    reasons = score.reasons + [f"{c['name']}: {c['reason']}" + (" (judge)" if c["by"] == "judge" else "")
                               for c in behaviour if c["verdict"] == FAIL]
    record.update(
        response=result.content, raw=result.raw, native_tool_calls=result.tool_calls,
        calls=[c.to_dict() for c in score.calls], checks=checks, behavior=behaviour,
        response_type=score.response.type, tool_verdict=tool_verdict, behavior_verdict=behavior_verdict,
        verdict=verdict, passed=verdict == "pass", reasons=reasons, error=None,
        latency_s=round(result.latency_s, 4),
        first_token_s=round(result.first_token_s, 4) if result.first_token_s is not None else None,
        prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
        token_source=result.token_source,
        finish_reason=result.finish_reason, attempts=result.attempts,
    )
    return record


def _tools_for(settings: EvalSettings) -> list[dict[str, Any]] | None:
    if not settings.tools_file:
        return None
    tools, sha = load_tools_file(settings.tools_file)
    if settings.tools_sha256 and sha != settings.tools_sha256:
        raise EvalCannotRun(f"{settings.tools_file} changed since this eval started (sha256 differs); "
                            "start a new eval instead of resuming")
    return tools


def _resolve_cases(settings: EvalSettings) -> list[Case]:
    prompt_set = load_prompt_set(settings.prompt_set)
    if settings.prompt_set_sha256 and prompt_set.sha256 != settings.prompt_set_sha256:
        raise EvalCannotRun(f"{settings.prompt_set} changed since this eval started (sha256 differs); "
                            "start a new eval instead of resuming")
    by_id = {c.id: c for c in prompt_set.cases}
    missing = [i for i in settings.case_ids if i not in by_id]
    if missing:
        raise EvalCannotRun(f"{settings.prompt_set} has no case {missing[0]!r} any more")
    return [by_id[i] for i in settings.case_ids]


def mark_eval_failed(eval_dir: Path, error: str) -> None:
    """Record why an eval could not run, so it does not read `running` for ever."""
    meta = _read_json(eval_dir / "eval.json")
    if isinstance(meta, dict) and meta.get("state") != "completed":
        meta.update(state="failed", ended_at=utc_now(), error=error)
        _write_meta(eval_dir, meta)


def finish_eval(eval_dir: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write summary.json and report.md from results.jsonl; returns the summary."""
    meta = meta or _read_json(eval_dir / "eval.json") or {}
    settings = EvalSettings.from_dict(meta.get("settings") or {})
    order = {case_id: i for i, case_id in enumerate(settings.case_ids)}
    results = sorted(read_results(eval_dir), key=lambda r: (order.get(str(r["id"]), len(order)), r.get("try", 1)))
    summary = aggregate(results)
    summary.update(eval_id=eval_dir.name, backend=settings.backend, url=redact_url(settings.url), model=settings.model,
                   prompt_set=settings.prompt_set, planned=len(settings.case_ids) * max(settings.repeats, 1),
                   started_at=meta.get("started_at"), ended_at=meta.get("ended_at"),
                   tools_file=settings.tools_file, no_tools=settings.no_tools)
    if settings.judge_model:
        summary["judge"].update(model=settings.judge_model, url=redact_url(settings.judge_url))
    atomic_write_text(eval_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(eval_dir / "report.md", render_report(summary, results))
    return summary


async def run_eval(eval_dir: str | Path, *, on_result: Callable[[dict[str, Any]], None] | None = None,
                   on_start: Callable[[int, int], None] | None = None,
                   client: OllamaClient | OpenAIClient | None = None, concurrency: int | None = None,
                   url: str | None = None, retry_errors: str = "transient") -> dict[str, Any]:
    """Run (or finish) the eval in `eval_dir`: only cases missing from results.jsonl are asked, and
    those that errored (`retry_errors`: "transient" ones, "all", or "none"). A retried case's new
    record is appended; the last record of a case is its result.

    `on_start(done, total)` is called once the work is known, `on_result(record)` as each
    case finishes (records are already on disk by then). Returns the summary. Cancelling
    the task leaves the eval `interrupted`, ready to resume. `url` is the server's real URL
    (eval.json keeps it without credentials).
    """
    eval_dir = Path(eval_dir)
    meta = _read_json(eval_dir / "eval.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
        raise LookupError(f"{eval_dir} is not an eval directory (no readable eval.json)")
    settings = EvalSettings.from_dict(meta["settings"])
    if concurrency:
        settings.concurrency = concurrency
    if url:
        settings.url = url
    elif settings.serve:
        # The server may have stopped since the eval began (or never started: launched from the app).
        try:
            await serve_for_eval(settings, say=lambda message: print(f"[serve] {message}", file=sys.stderr,
                                                                      flush=True))
        except EvalCannotRun as exc:
            mark_eval_failed(eval_dir, str(exc))
            raise
    cases = _resolve_cases(settings)
    tools = _tools_for(settings)
    results_path = eval_dir / "results.jsonl"
    _drop_partial_line(results_path)
    done = {record_key(r["id"], r.get("try")) for r in read_results(eval_dir) if not _retry(r, retry_errors)}
    tries = range(1, max(settings.repeats, 1) + 1)
    todo = [(c, n) for c in cases for n in tries if record_key(c.id, n) not in done]

    from synaptic_tui.jobs import process_start_marker

    meta.update(state="running", settings=settings.stored(), pid=os.getpid(), host=socket.gethostname(),
                start_marker=process_start_marker(os.getpid()), ended_at=None, error=None)
    _write_meta(eval_dir, meta)
    if on_start:
        on_start(len(done), len(cases) * len(tries))
    own = client is None
    client = client or _client_for(settings)
    judge = None
    if settings.judge_model:
        from evaluator.judge import CACHE_NAME, Judge

        judge = Judge(_judge_client(settings), settings.judge_model, eval_dir.parent / CACHE_NAME)
    pending = iter(todo)
    try:
        with results_path.open("a", encoding="utf-8") as out:
            async def worker() -> None:
                # The workers share one iterator: each takes the next case as soon as it is free.
                for case, attempt in pending:
                    record = await run_case(client, settings, case, tools=tools, judge=judge)
                    record["try"] = attempt
                    record["finished_at"] = utc_now()
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()
                    if on_result:
                        on_result(record)

            tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(settings.concurrency, len(todo))))]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
    except asyncio.CancelledError:
        meta.update(state="interrupted", ended_at=utc_now())
        _write_meta(eval_dir, meta)
        raise
    except BaseException as exc:
        meta.update(state="failed", ended_at=utc_now(), error=f"{type(exc).__name__}: {redact_text(str(exc))}")
        _write_meta(eval_dir, meta)
        raise
    finally:
        if own:
            await client.aclose()
        if judge is not None:
            await judge.aclose()
    meta.update(state="completed", ended_at=utc_now())
    summary = finish_eval(eval_dir, meta)
    _write_meta(eval_dir, meta)
    return summary


def _retry(record: dict[str, Any], which: str) -> bool:
    if not record.get("error") or which == "none":
        return False
    return which == "all" or is_transient(record)


# --- comparing -------------------------------------------------------------------


def _delta(a: float | None, b: float | None) -> float | None:
    return round(b - a, 4) if a is not None and b is not None else None


def compare_evals(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Per-case flips (fixed: fail->pass, broken: pass->fail), flips of each behaviour check,
    and pass-rate deltas overall, for tool calls, for behaviour and per tag, from A to B.
    A case run several times (--repeats) passes only if every try passed."""
    a, b = Path(a), Path(b)
    for path in (a, b):
        load_eval(path)  # a clear LookupError for a directory that is not an eval
    results_a, results_b = read_results(a), read_results(b)
    ca, cb = combine_tries(results_a), combine_tries(results_b)
    fixed, broken, behavior_fixed, behavior_broken = [], [], [], []
    for case_id in ca.keys() & cb.keys():
        before, after = ca[case_id]["verdict"], cb[case_id]["verdict"]
        if {before, after} == {"pass", "fail"}:
            entry = {"id": case_id, "before": before == "pass", "after": after == "pass",
                     "reasons_before": ca[case_id]["reasons"], "reasons_after": cb[case_id]["reasons"]}
            (fixed if after == "pass" else broken).append(entry)
        checks_a, checks_b = ca[case_id]["behavior"], cb[case_id]["behavior"]
        for name in checks_a.keys() & checks_b.keys():
            if {checks_a[name], checks_b[name]} == {"pass", "fail"}:
                entry = {"id": case_id, "check": name, "before": checks_a[name], "after": checks_b[name],
                         "reason_after": cb[case_id]["behavior_reasons"].get(name, "")}
                (behavior_fixed if checks_b[name] == "pass" else behavior_broken).append(entry)
    sa, sb = aggregate(results_a), aggregate(results_b)
    per_tag = {}
    for tag in sorted(set(sa["per_tag"]) | set(sb["per_tag"])):
        rate_a = sa["per_tag"].get(tag, {}).get("pass_rate")
        rate_b = sb["per_tag"].get(tag, {}).get("pass_rate")
        per_tag[tag] = {"a": rate_a, "b": rate_b, "delta": _delta(rate_a, rate_b)}
    key = lambda e: (e["id"], e.get("check", ""))  # noqa: E731
    rates = lambda part: {"a": sa[part]["pass_rate"], "b": sb[part]["pass_rate"],  # noqa: E731
                          "delta": _delta(sa[part]["pass_rate"], sb[part]["pass_rate"])}
    return {
        "a": str(a), "b": str(b),
        "overall": {"a": sa["pass_rate"], "b": sb["pass_rate"], "delta": _delta(sa["pass_rate"], sb["pass_rate"])},
        "tool_calls": rates("tool_calls"), "behavior": rates("behavior"),
        "fixed": sorted(fixed, key=key), "broken": sorted(broken, key=key),
        "behavior_fixed": sorted(behavior_fixed, key=key), "behavior_broken": sorted(behavior_broken, key=key),
        "only_in_a": sorted(ca.keys() - cb.keys()), "only_in_b": sorted(cb.keys() - ca.keys()),
        "per_tag": per_tag,
    }
