"""The headless eval command, shared by `synaptic-tui eval` and `python -m evaluator`.

Exit codes: 0 the eval completed (whatever the pass rate, unless --fail-under), 1 it
could not run (server down, model missing, no case got an answer), 2 bad input or a
pass rate below --fail-under, 130 interrupted.
Only argparse is imported at module level, so building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

# Kept here, not imported from evaluator.scoring, so building the parser stays cheap.
TOOL_CALL_FORMATS = ("hermes", "mistral", "llama3_json", "chatml_plain", "json")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class EvalUsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _rate(text: str) -> float:
    """0.8, or 80%: a pass rate to gate on."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (0.8 or 80%)") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (or 0% and 100%), got {text}")
    return value


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `synaptic-tui eval` (also `python -m evaluator run`)."""
    parser.add_argument("--backend", choices=["ollama", "openai"], default=None,
                        help="ollama (native /api/chat) or openai (any OpenAI-compatible server); default ollama")
    parser.add_argument("--url", help="server URL (default: Ollama http://127.0.0.1:11434, "
                                      "OpenAI-compatible http://127.0.0.1:1234/v1 as LM Studio serves it)")
    parser.add_argument("--model", help="model name as the server lists it")
    parser.add_argument("--serve", metavar="RUN[:CHECKPOINT]|MODEL",
                        help="serve this checkpoint (or base model, export, model directory) on a local server "
                             "first, or reuse the one serving it; sets --backend, --url and --model")
    parser.add_argument("--engine", choices=["auto", "vllm", "transformers", "mlx", "llama.cpp"],
                        help="with --serve: the server engine (default: the fastest this machine has)")
    parser.add_argument("--prompt-set", metavar="FILE", help="JSON list, {\"cases\": [...]} or JSONL of cases")
    parser.add_argument("--concurrency", type=_positive_int, metavar="N", help="requests in flight (default 4)")
    parser.add_argument("--tags", help="only cases with any of these tags (comma-separated)")
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="at most N cases")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the cases (seeded) before --limit")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (server default when not given)")
    parser.add_argument("--max-tokens", type=_positive_int, metavar="N",
                        help="most tokens per answer (Ollama num_predict)")
    parser.add_argument("--no-stream", action="store_true", help="ask for whole responses instead of streams")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait on a silent server (default 120)")
    parser.add_argument("--case-timeout", type=float, metavar="S",
                        help="wall-clock seconds one case may take, retries included (default: --timeout plus "
                             "half a second per token of --max-tokens, 1024 if unset)")
    parser.add_argument("--retries", type=int, default=3, help="retries on connect errors and 5xx (default 3)")
    parser.add_argument("--run", metavar="RUN", help="file the eval under this training run (runs/<id>/evals/)")
    parser.add_argument("--evals-dir", metavar="DIR", help="where standalone evals go (default: $SYNAPTIC_EVALS_DIR, "
                                                           "else ./evals)")
    parser.add_argument("--resume", metavar="EVAL", help="finish an interrupted eval (id, prefix or path)")
    parser.add_argument("--retry-errors", choices=["transient", "all", "none"], default="transient",
                        help="on --resume, which errored cases to ask again: transient ones (connect, timeout, "
                             "deadline, HTTP 5xx/429; the default), all, or none")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two evals: flips and per-tag deltas")
    parser.add_argument("--tools", metavar="FILE", dest="tools_file",
                        help="an OpenAI function list: offered to cases that list no tools, arguments checked "
                             "against it (a case's own tools win)")
    parser.add_argument("--no-tools", action="store_true",
                        help="send no tools, as the original Synaptic Tuner did (arguments are still checked)")
    parser.add_argument("--tool-format", choices=TOOL_CALL_FORMATS,
                        help="read tool calls written as text in this format only (default: every format)")
    parser.add_argument("--judge-url", metavar="URL",
                        help="an OpenAI-compatible server whose model judges the checks that need reading "
                             "(API key, if any, from $SYNAPTIC_JUDGE_API_KEY)")
    parser.add_argument("--judge-model", metavar="NAME", help="the judge model, as that server lists it")
    parser.add_argument("--repeats", type=_positive_int, metavar="N", default=None,
                        help="ask each case N times (needs --temperature above 0): mean, spread and pass^N")
    parser.add_argument("--fail-under", type=_rate, metavar="RATE",
                        help="exit 2 when the overall pass rate is below RATE (0.8 or 80%%), for CI")


def _roots(args: argparse.Namespace, runs_dir: Path) -> list[Path]:
    from evaluator.runner import evals_root

    if args.run:
        from synaptic_tui.runs import find_run

        return [find_run(runs_dir, args.run).path / "evals"]
    return [evals_root(args.evals_dir)]


class _Progress:
    """A live line on stderr: rewritten in place on a terminal, every few cases otherwise."""

    BAR = 24  # characters

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.done = self.total = self.passed = self.errors = 0
        self.start_done = 0

    def start(self, done: int, total: int) -> None:
        self.done, self.total, self.start_done = done, total, done
        if done and not self.quiet:
            print(f"resuming: {done} of {total} cases already done", file=sys.stderr)

    def result(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.passed += bool(record.get("passed"))
        self.errors += bool(record.get("error"))
        if self.quiet:
            return
        filled = round(self.BAR * self.done / self.total) if self.total else self.BAR
        line = (f"[{'#' * filled}{'-' * (self.BAR - filled)}] {self.done}/{self.total} cases  "
                f"passed {self.passed}  errors {self.errors}  last {record['id']} {record.get('latency_s') or 0:.2f}s")
        if self.tty:
            print(f"\r{line:<100}", end="", file=sys.stderr, flush=True)
        elif (self.done - self.start_done) % max(1, self.total // 20) == 0 or self.done == self.total:
            print(line, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.tty and not self.quiet and self.done > self.start_done:
            print(file=sys.stderr)


def _print_summary(summary: dict[str, Any], eval_dir: Path) -> None:
    from evaluator.report import _pct, rates_line

    print(f"{summary['eval_id']}: {summary['passed']}/{summary['total']} passed ({_pct(summary['pass_rate'])}), "
          f"{summary['errors']} errors"
          + (f", {summary['not_scored']} not scored" if summary.get("not_scored") else ""))
    print(f"  {rates_line(summary)}")
    width = max([len(t) for t in summary["per_tag"]] + [3])
    for tag, row in summary["per_tag"].items():
        print(f"  {tag:<{width}}  {row['passed']:>4}/{row['total']:<4} {_pct(row['pass_rate']):>7}")
    print(f"report: {eval_dir / 'report.md'}")


def _resume_settings_check(args: argparse.Namespace, settings) -> None:
    for flag, attr in (("backend", "backend"), ("model", "model")):
        given = getattr(args, flag)
        if given is not None and given != getattr(settings, attr):
            raise EvalUsageError(f"--{flag} {given} differs from the eval being resumed ({getattr(settings, attr)}); "
                                 "start a new eval instead")
    if args.prompt_set and Path(args.prompt_set).resolve() != Path(settings.prompt_set):
        raise EvalUsageError(f"--prompt-set differs from the eval being resumed ({settings.prompt_set})")


def _scoring_options(args: argparse.Namespace, prompt_set) -> dict[str, Any]:
    """--tools, --no-tools, --tool-format, --judge-*, --repeats as settings, refused when they cannot work."""
    from evaluator.clients import OPENAI_URL
    from evaluator.prompts import PromptSetError, load_tools_file

    options: dict[str, Any] = {"no_tools": args.no_tools, "tool_format": args.tool_format,
                               "repeats": args.repeats or 1}
    if args.tools_file:
        try:
            tools, sha = load_tools_file(args.tools_file)
        except PromptSetError as exc:
            raise EvalUsageError(str(exc)) from None
        names = [t["function"]["name"] for t in tools]
        for case in prompt_set.cases:
            missing = [n for n in case.expected_tools or [] if n not in names] if not case.tools else []
            if missing:
                raise EvalUsageError(f"{prompt_set.path}: case {case.id!r}: expected_tools: {missing[0]!r} is not "
                                     f"in --tools {args.tools_file}")
        options.update(tools_file=str(Path(args.tools_file).resolve()), tools_sha256=sha)
    if args.judge_url and not args.judge_model:
        raise EvalUsageError("--judge-url needs --judge-model (the judge's name as its server lists it)")
    if args.judge_model:
        options.update(judge_model=args.judge_model, judge_url=args.judge_url or OPENAI_URL)
    if (args.repeats or 1) > 1 and not args.temperature:
        raise EvalUsageError("--repeats needs --temperature above 0: at 0 every try gives the same answer")
    return options


def _compare(args: argparse.Namespace, roots: list[Path]) -> int:
    from evaluator.report import render_comparison
    from evaluator.runner import compare_evals, find_eval

    a, b = (find_eval(ref, roots) for ref in args.compare)
    comparison = compare_evals(a, b)
    if args.json:
        print(json.dumps(comparison, indent=2))
    else:
        print(render_comparison(comparison))
    return EXIT_OK


def run_eval_command(args: argparse.Namespace, runs_dir: Path, prog: str = "synaptic-tui eval") -> int:
    """Run, resume or compare evals from parsed arguments; returns the exit code."""
    try:
        return _run(args, runs_dir, prog)
    except EvalUsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LookupError as exc:  # unknown run or eval
        print(f"{prog}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace, runs_dir: Path, prog: str) -> int:
    import asyncio

    from evaluator.prompts import PromptSetError, load_prompt_set
    from evaluator.runner import (EvalCannotRun, create_eval, find_eval, load_eval, mark_eval_failed, new_settings,
                                  preflight, run_eval)

    roots = _roots(args, runs_dir)
    if args.compare:
        return _compare(args, roots)
    if args.resume:
        import os

        from evaluator.runner import URL_ENV
        from synaptic_tui.redact import MASK

        eval_dir = find_eval(args.resume, roots)
        settings = load_eval(eval_dir).settings
        _resume_settings_check(args, settings)
        url = args.url or os.environ.get(URL_ENV)
        if url:
            settings.url = url
        elif MASK in settings.url:
            raise EvalUsageError(f"the URL of {eval_dir.name} had credentials, which are never stored "
                                 f"({settings.url}); pass --url again to resume it")
        if args.concurrency:
            settings.concurrency = args.concurrency
        if args.judge_url:
            settings.judge_url = args.judge_url  # the judge moved; its model stays the eval's
        elif settings.judge_url and MASK in settings.judge_url:
            raise EvalUsageError(f"the judge URL of {eval_dir.name} had credentials, which are never stored "
                                 f"({settings.judge_url}); pass --judge-url again to resume it")
        if args.case_timeout:
            settings.case_timeout = args.case_timeout
    else:
        target = None
        if getattr(args, "serve", None):
            from synaptic_tui.servers.targets import TargetError, resolve_target

            if args.url or args.model or args.backend == "ollama":
                raise EvalUsageError("--serve picks the server and model itself: leave out --url, --model and "
                                     "--backend ollama")
            try:
                target = resolve_target(args.serve, runs_dir)
            except TargetError as exc:
                raise EvalUsageError(str(exc)) from None
            args.backend, args.model = "openai", target.label
            if target.run_dir is not None and not args.run and not args.evals_dir:
                roots = [target.run_dir / "evals"]  # filed under the run whose checkpoint it is
        missing = [flag for flag, value in (("--model", args.model), ("--prompt-set", args.prompt_set)) if not value]
        if missing:
            raise EvalUsageError(f"{' and '.join(missing)} required (or --resume EVAL, or --compare A B)")
        try:
            prompt_set = load_prompt_set(args.prompt_set)
        except PromptSetError as exc:
            raise EvalUsageError(str(exc)) from None
        for warning in prompt_set.warnings:
            print(f"{prog}: warning: {warning}", file=sys.stderr)
        tags = [t.strip() for t in (args.tags or "").split(",") if t.strip()]
        unknown = sorted(set(tags) - set(prompt_set.tags))
        if unknown:
            raise EvalUsageError(f"--tags: {', '.join(unknown)} not in {args.prompt_set} "
                                 f"(its tags: {', '.join(prompt_set.tags) or 'none'})")
        settings = new_settings(args.backend or "ollama", args.model, prompt_set, url=args.url, tags=tags,
                                limit=args.limit, shuffle=args.shuffle, seed=args.seed,
                                temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                                stream=not args.no_stream, concurrency=args.concurrency or 4,
                                timeout=args.timeout, retries=args.retries, case_timeout=args.case_timeout,
                                run_id=roots[0].parent.name if args.run or target and target.run_dir else None,
                                **_scoring_options(args, prompt_set))
        if target is not None:
            settings.serve, settings.engine, settings.runs_dir = target.portable_ref, args.engine, str(runs_dir)
            settings.checkpoint = target.checkpoint
            settings.tool_format = settings.tool_format or target.tool_format
        if not settings.case_ids:
            raise EvalUsageError(f"no case of {args.prompt_set} matches --tags {args.tags}")
        eval_dir = None

    progress = _Progress(quiet=args.json)

    async def go() -> tuple[Path, dict[str, Any]]:
        nonlocal eval_dir
        if settings.serve and not (args.resume and args.url):
            from evaluator.runner import save_settings, serve_for_eval

            if eval_dir is None:  # named for what is served, and where the app looks if serving fails
                eval_dir = create_eval(settings, roots[0])
            await serve_for_eval(settings, say=None if args.json else lambda message: print(
                f"{prog}: {message}", file=sys.stderr, flush=True))
            save_settings(eval_dir, settings)  # the server's URL and model id, for run_eval and a later resume
        for warning in await preflight(settings):
            print(f"{prog}: warning: {warning}", file=sys.stderr)
        if eval_dir is None:
            try:
                eval_dir = create_eval(settings, roots[0])
            except OSError as exc:
                raise EvalUsageError(f"cannot write the eval under {roots[0]}: {exc.strerror or exc}") from None
        if not args.json:
            print(f"eval {eval_dir.name} -> {eval_dir}", file=sys.stderr)
        summary = await run_eval(eval_dir, on_start=progress.start, on_result=progress.result,
                                 concurrency=settings.concurrency, url=settings.url,
                                 retry_errors=args.retry_errors if args.resume else "none")
        return eval_dir, summary

    try:
        eval_dir, summary = asyncio.run(go())
    except EvalCannotRun as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        if eval_dir is not None:  # a resumed (or app-launched) eval: say why it stopped where the app looks
            mark_eval_failed(eval_dir, str(exc))
        return EXIT_FAILED
    except OSError as exc:  # results.jsonl or eval.json could not be written (a full disk)
        progress.end()
        print(f"{prog}: could not write the eval's files: {exc.strerror or exc} ({exc.filename or eval_dir}); "
              "the cases already written are kept, resume it later", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        progress.end()
        if eval_dir is not None:
            # The path, not the id: an eval filed under a run is not in the default evals dir.
            print(f"{prog}: interrupted after {progress.done} of {progress.total} cases; resume with "
                  f"--resume {eval_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    progress.end()
    if args.json:
        print(json.dumps({"eval_dir": str(eval_dir), **summary}, indent=2))
    else:
        _print_summary(summary, eval_dir)
    if summary["total"] and summary["errors"] == summary["total"]:
        from synaptic_tui.redact import redact_url

        print(f"{prog}: no case got an answer from {redact_url(settings.url)} (see {eval_dir / 'report.md'})",
              file=sys.stderr)
        return EXIT_FAILED
    if args.fail_under is not None:
        from evaluator.report import _pct

        rate = summary["pass_rate"]
        if rate is None or rate < args.fail_under:
            print(f"{prog}: pass rate {_pct(rate)} is below --fail-under {_pct(args.fail_under)}", file=sys.stderr)
            return EXIT_USAGE
    return EXIT_OK


# --- python -m evaluator ---------------------------------------------------------------


def _list_command(argv: Sequence[str]) -> int:
    from evaluator.runner import evals_root, list_evals

    parser = argparse.ArgumentParser(prog="python -m evaluator list", description="evals in a directory")
    parser.add_argument("dir", nargs="?", help="evals dir or a run's evals/ (default: $SYNAPTIC_EVALS_DIR or ./evals)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    evals = list_evals(evals_root(args.dir))
    if args.json:
        print(json.dumps([{"eval_id": e.eval_id, "path": str(e.path), "state": e.state, "model": e.settings.model,
                           "backend": e.settings.backend, "done": e.done, "total": e.total,
                           "pass_rate": e.pass_rate} for e in evals], indent=2))
    for e in [] if args.json else evals:
        rate = "-" if e.pass_rate is None else f"{e.pass_rate * 100:.1f}%"
        print(f"{e.eval_id}  {e.state:<11} {e.done}/{e.total}  {rate:>6}  {e.settings.backend}:{e.settings.model}")
    return EXIT_OK


def _prompts_command(argv: Sequence[str]) -> int:
    from evaluator.prompts import discover_prompt_sets
    from synaptic_tui.paths import shipped_dir

    parser = argparse.ArgumentParser(prog="python -m evaluator prompts", description="prompt sets with case counts")
    parser.add_argument("dir", nargs="?", help="directory to scan (default: the shipped examples/prompts)")
    args = parser.parse_args(argv)
    for info in discover_prompt_sets(args.dir or shipped_dir("examples") / "prompts"):
        detail = info.error or f"{info.count} cases; tags: {', '.join(info.tags) or 'none'}"
        print(f"{info.name}\t{detail}\t{info.path}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["list"]:
        return _list_command(argv[1:])
    if argv[:1] == ["prompts"]:
        return _prompts_command(argv[1:])
    compare = argv[:1] == ["compare"]
    if argv[:1] in (["run"], ["compare"]):
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="python -m evaluator",
        description="Evaluate a model through Ollama or an OpenAI-compatible server. "
                    "Also: `python -m evaluator compare A B`, `list [DIR]`, `prompts [DIR]`.")
    if compare:
        parser.add_argument("a", metavar="A")
        parser.add_argument("b", metavar="B")
        parser.add_argument("--evals-dir", metavar="DIR")
    else:
        add_eval_arguments(parser)
    parser.add_argument("--runs-dir", metavar="DIR", help="runs root for --run (default: $SYNAPTIC_RUNS_DIR or ./runs)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    args = parser.parse_args(argv)
    if compare:
        args.compare, args.run = [args.a, args.b], None
    from synaptic_tui.runs import resolve_runs_dir

    return run_eval_command(args, resolve_runs_dir(args.runs_dir), prog="python -m evaluator")
