"""The eval runner: pick a server, model and prompt set, run, and watch results fill in; past evals and comparisons.

An eval runs detached (`python -m evaluator --resume DIR`), like a trainer, so
leaving the screen or the app never stops it; the screen follows the eval's
results.jsonl by byte offset. The evaluator's modules import only httpx.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import (Button, Checkbox, DataTable, Footer, Header, Input, Label, Log, RadioButton, RadioSet,
                             Select, Static)

from synaptic_tui.follow import JsonlFollower
from synaptic_tui.paths import display_path, shipped_dir

BACKENDS = (("ollama", "Ollama"), ("openai", "OpenAI-compatible (LM Studio, llama.cpp, vLLM, mlx_lm)"))
SERVE = ("serve", "Serve this checkpoint here (fastest engine; reuses a running server)")


def prompt_dirs() -> list[Path]:
    """Where prompt sets are looked for: ./prompts, ./examples/prompts, then the shipped examples."""
    seen, found = set(), []
    for directory in (Path.cwd() / "prompts", Path.cwd() / "examples" / "prompts", shipped_dir("examples") / "prompts"):
        key = directory.resolve()
        if key not in seen and directory.is_dir():
            seen.add(key)
            found.append(directory)
    return found


def eval_roots(runs_dir: Path) -> list[Path]:
    """The standalone evals dir and every run's evals/."""
    from evaluator.runner import evals_root

    roots = [evals_root()]
    if runs_dir.is_dir():
        roots += sorted(p / "evals" for p in runs_dir.iterdir() if (p / "evals").is_dir())
    return roots


def launch_eval(eval_dir: Path, url: str | None = None) -> None:
    """Run the eval in its own session, output to eval.log: closing the app never stops it.

    The server's URL goes through the environment: eval.json keeps it without credentials."""
    from evaluator.runner import URL_ENV
    from synaptic_tui.jobs import launch_detached

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({URL_ENV: url} if url else {})}
    launch_detached([sys.executable, "-m", "evaluator", "--resume", str(eval_dir)], eval_dir,
                    eval_dir / "eval.log", env)


def called_tools(record: dict[str, Any]) -> str:
    return ", ".join(c.get("name", "?") for c in record.get("calls") or [])


VERDICT_CELLS = {"pass": ("yes", "green"), "fail": ("no", "red"), "not scored": ("n/s", "yellow")}
CHECK_MARKS = {"pass": "ok  ", "fail": "FAIL", "not scored": "n/s "}


def verdict_cell(verdict: str | None) -> Text:
    text, style = VERDICT_CELLS.get(verdict or "", ("", ""))
    return Text(text, style=style)


def check_lines(record: dict[str, Any]) -> list[str]:
    """A case's checks as the case log shows them: tool-call checks, then behaviour checks with who decided."""
    lines = [f"  {'ok  ' if c.get('passed') else 'FAIL'} {c.get('name', '')}: {c.get('detail', '')}"
             for c in record.get("checks") or []]
    for c in record.get("behavior") or []:
        by = f" ({c['by']})" if c.get("by") else ""
        lines.append(f"  {CHECK_MARKS.get(c.get('verdict'), '?   ')} {c.get('name', '')}{by}: {c.get('reason', '')}")
        judge = c.get("judge")
        if judge and c.get("by") == "rule":  # the judge's reading too, where the rule decided
            lines.append(f"       judge read it as {judge['verdict']}: {judge.get('reason')}" if judge.get("verdict")
                         else f"       {judge.get('reason')}")
    return lines


def rates_text(summary: dict[str, Any]) -> str:
    """The tool-call and behaviour pass rates, and what was not scored, for the summary pane."""
    pct = lambda v: f"{v:.0%}" if v is not None else "-"  # noqa: E731
    parts = []
    for key, label in (("tool_calls", "tool calls"), ("behavior", "behaviour")):
        part = summary.get(key) or {}
        if part.get("cases"):  # a set that asks nothing of a part says nothing of it
            parts.append(f"{label} {pct(part.get('pass_rate'))} ({part['passed']}/{part['passed'] + part['failed']})")
    text = "   ".join(parts)
    behaviour = summary.get("behavior") or {}
    unscored = (behaviour.get("checks") or {}).get("not_scored", 0)
    if unscored:
        why = ", ".join(f"{n} {reason}" for reason, n in (behaviour.get("not_scored_why") or {}).items())
        text += f"   {unscored} check{'s' if unscored != 1 else ''} not scored ({why})"
    judge = summary.get("judge") or {}
    if judge.get("model"):
        text += f"\njudge {judge['model']}: {judge.get('decided', 0)} verdicts"
        if judge.get("compared"):
            text += f", agrees with the rules on {judge['agreed']}/{judge['compared']}"
    return text


class EvalResults(Vertical):
    """One eval's results as they arrive: a table of cases, the highlighted case's exchange, the summary."""

    DEFAULT_CSS = """
    EvalResults { height: 1fr; }
    EvalResults #results { height: 1fr; }
    EvalResults #case-log { height: 10; border-top: solid $panel; }
    EvalResults #eval-summary { height: auto; max-height: 12; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eval_dir: Path | None = None
        self.follower: JsonlFollower | None = None
        self.records: dict[str, dict[str, Any]] = {}
        self._state = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="eval-progress")
        yield DataTable(id="results", cursor_type="row", zebra_stripes=True)
        yield Log(id="case-log", max_lines=2000)
        yield Static("", id="eval-summary")

    def on_mount(self) -> None:
        table = self.query_one("#results", DataTable)
        for key, label, width in (("case", "Case", 22), ("tags", "Tags", 14), ("expected", "Expected", 18),
                                  ("called", "Called", 18), ("tools", "Tools", 5), ("behaviour", "Behav", 5),
                                  ("pass", "Pass", 4), ("latency", "Latency", 7)):
            table.add_column(label, key=key, width=width)
        self.set_interval(0.3, self.poll)

    def follow(self, eval_dir: Path) -> None:
        self.eval_dir = Path(eval_dir)
        self.follower = JsonlFollower(self.eval_dir / "results.jsonl")
        self.records = {}
        self._state = ""
        self.query_one("#results", DataTable).clear()
        self.query_one("#case-log", Log).clear()
        self.query_one("#eval-summary", Static).update("")
        self.poll()

    def poll(self) -> None:
        from evaluator.runner import load_eval, record_key
        from evaluator.scoring import tool_verdict_of, verdict_of

        if self.eval_dir is None or self.follower is None:
            return
        records, reset, _ = self.follower.poll_records()
        table = self.query_one("#results", DataTable)
        if reset:
            table.clear()
            self.records = {}
        for record in records:
            attempt = record.get("try") if isinstance(record.get("try"), int) else 1
            key = record_key(record.get("id"), attempt)
            self.records[key] = record
            passed = Text("err", style="red") if record.get("error") else verdict_cell(verdict_of(record))
            latency = record.get("latency_s")
            label = str(record.get("id")) + (f" #{attempt}" if attempt > 1 else "")
            row = (label, ", ".join(record.get("tags") or []), ", ".join(record.get("expected_tools") or []),
                   called_tools(record), verdict_cell(tool_verdict_of(record)),
                   verdict_cell(record.get("behavior_verdict")), passed,
                   f"{latency:.2f}s" if isinstance(latency, (int, float)) else "")
            if key in table.rows:
                table.remove_row(key)
            table.add_row(*row, key=key)
        if records and table.row_count == len(records):
            self.show_case()
        try:
            info = load_eval(self.eval_dir)
        except LookupError:
            return
        passed = sum(bool(r.get("passed")) for r in self.records.values())
        where = info.settings.url or "its server starting (eval.log says how far)"
        progress = (f"[b]{info.state}[/]  {len(self.records)}/{info.total} cases  passed {passed}"
                    f"   {escape(info.settings.model)} @ {escape(where)}")
        if info.error:
            progress += f"   [red]{escape(info.error)}[/]"
        self.query_one("#eval-progress", Static).update(progress)
        if info.state != self._state:
            self._state = info.state
            if info.state == "completed":
                self.show_summary()

    def show_summary(self) -> None:
        try:
            summary = json.loads((self.eval_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return
        rate = summary.get("pass_rate")
        lines = [f"[b]pass rate {rate:.0%}[/] ({summary.get('passed')}/{summary.get('total')}, "
                 f"{summary.get('errors', 0)} errors)" if rate is not None else "no results"]
        if rates_text(summary):
            lines.append(escape(rates_text(summary)))
        pct = lambda v: f"{v:.0%}" if v is not None else "-"  # noqa: E731
        parts = [(key, label) for key, part, label in (("tool_pass_rate", "tool_calls", "tools"),
                                                       ("behavior_pass_rate", "behavior", "behaviour"))
                 if (summary.get(part) or {}).get("cases")]
        for tag, row in (summary.get("per_tag") or {}).items():
            lines.append(f"  {escape(tag):<24} {row['passed']}/{row['total']}  {pct(row.get('pass_rate')):>4}"
                         + "".join(f"   {label} {pct(row.get(key)):>4}" for key, label in parts))
        lines.append(f"report: {escape(display_path(self.eval_dir / 'report.md'))}")
        self.query_one("#eval-summary", Static).update("\n".join(lines))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_case()

    def highlighted_record(self) -> dict[str, Any] | None:
        table = self.query_one("#results", DataTable)
        if not table.row_count:
            return None
        return self.records.get(str(table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value))

    def show_case(self) -> None:
        table = self.query_one("#results", DataTable)
        if not table.row_count:
            return
        key = str(table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value)
        record = self.records.get(key)
        log = self.query_one("#case-log", Log)
        log.clear()
        if record is None:
            return
        question = next((m.get("content") for m in reversed(record.get("prompt") or []) if m.get("role") == "user"), "")
        lines = [f"case {key}: {question}"]
        if record.get("notes"):
            lines.append(f"  notes: {record['notes']}")
        if record.get("response_type"):
            lines.append(f"  reply: {record['response_type']}"
                         + (f" (expected {record['expected_response_type']})"
                            if record.get("expected_response_type") else ""))
        lines += check_lines(record)
        error = record.get("error")
        if error:
            lines.append(f"  error ({error.get('kind')}): {error.get('message')}")
        lines.append("response:")
        lines += (record.get("response") or "").splitlines() or ["(empty)"]
        for call in record.get("calls") or []:
            lines.append(f"call: {call.get('name')} {json.dumps(call.get('arguments'), ensure_ascii=False)}"
                         f" ({call.get('source', 'native')})")
        if record.get("raw") is not None:
            # What the server sent last, as it sent it: the final body or stream chunk.
            lines.append("raw:")
            lines += json.dumps(record["raw"], indent=2, ensure_ascii=False).splitlines()
        # The question and the verdicts first, not the raw tail.
        log.write_lines(lines, scroll_end=False)
        log.scroll_home(animate=False)


class EvaluateScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("ctrl+r", "run_eval", "Run eval", id="evaluate.run"),
        Binding("ctrl+o", "past_evals", "Past evals", id="evaluate.past"),
    ]

    DEFAULT_CSS = """
    EvaluateScreen #eval-form { width: 46; padding: 0 1; }
    EvaluateScreen #eval-form Input, EvaluateScreen #eval-form Select { margin-bottom: 1; }
    EvaluateScreen #eval-numbers Input { width: 1fr; }
    EvaluateScreen #eval-numbers { height: auto; }
    EvaluateScreen #reach { margin-bottom: 1; }
    """

    def __init__(self, run_dir: Path | None = None, model: str | None = None, checkpoint: str | None = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir) if run_dir else None
        self.checkpoint = checkpoint
        self.wanted_model = model
        self.prompt_sets = []

    def compose(self) -> ComposeResult:
        from evaluator.prompts import discover_prompt_sets

        for directory in prompt_dirs():
            self.prompt_sets += [info for info in discover_prompt_sets(directory) if not info.error]
        options = [(f"{info.name} ({info.count} cases)", str(info.path)) for info in self.prompt_sets]
        yield Header()
        with Horizontal():
            with VerticalScroll(id="eval-form"):
                yield Label("Backend")
                with RadioSet(id="backend"):
                    backends = ((SERVE,) if self.checkpoint else ()) + BACKENDS
                    for index, (name, title) in enumerate(backends):
                        yield RadioButton(title, value=index == 0, name=name)
                if self.checkpoint:
                    yield Checkbox("and the base model beside it", id="beside-base")
                yield Static("checking...", id="reach")
                yield Label("URL")
                yield Input(id="url")
                yield Label("Model (as the server lists it)")
                yield Select([], id="model", prompt="pick a model")
                yield Label("Prompt set")
                yield Select(options, id="prompt-set", value=options[0][1] if options else Select.NULL,
                             prompt="no prompt sets found")
                yield Label("Concurrency / limit / temp / max tokens")
                with Horizontal(id="eval-numbers"):
                    yield Input("4", id="concurrency", type="integer")
                    yield Input("", id="limit", type="integer", placeholder="all")
                    yield Input("0", id="temperature", type="number")
                    yield Input("", id="max-tokens", type="integer", placeholder="any")
                yield Input("", id="tags", placeholder="tags (comma-separated), empty: all")
                yield Label("Judge (optional): model, URL")
                yield Input("", id="judge-model", placeholder="judge model (empty: no judge)")
                yield Input("", id="judge-url", placeholder="http://127.0.0.1:1234/v1")
                yield Button("Run eval  ctrl+r", id="run", variant="primary")
                if self.run_dir is not None:
                    yield Static(self.run_note(), id="eval-run")
            yield EvalResults(id="eval-results")
        yield Footer()

    def run_note(self) -> str:
        from synaptic_tui.exporting import serve_hint

        note = f"filed under run {escape(self.run_dir.name)}"
        if self.checkpoint:
            note += f", {escape(self.checkpoint)}\n{escape(serve_hint(self.run_dir, self.checkpoint))}"
        return note

    def on_mount(self) -> None:
        self.sub_title = "Evaluate"
        self.backend_changed()

    def backend(self) -> str:
        pressed = self.query_one("#backend", RadioSet).pressed_button
        return pressed.name if pressed is not None else "ollama"

    @on(RadioSet.Changed, "#backend")
    def backend_changed(self) -> None:
        from evaluator.clients import default_url

        serving = self.backend() == "serve"
        for wid in ("#url", "#model"):
            self.query_one(wid).disabled = serving
        if self.checkpoint:
            self.query_one("#beside-base", Checkbox).disabled = not serving
        if serving:
            self.query_one("#url", Input).value = ""
            self.query_one("#reach", Static).update(self.serve_note())
            return
        self.query_one("#url", Input).value = default_url(self.backend())
        self.check_server()

    def serve_note(self) -> str:
        from synaptic_tui.servers.launch import serving
        from synaptic_tui.servers.targets import TargetError, resolve_target

        try:
            target = resolve_target(f"{self.run_dir}:{self.checkpoint}", self.app.services.runs_dir)
        except TargetError as exc:
            return f"[red]{escape(str(exc))}[/]"
        server = serving(self.app.services.runs_dir, target)
        if server is not None:
            return f"[green]served[/] by {escape(server.engine)} at {escape(server.url)}: reused"
        return "served when the eval starts (an adapter is merged first where the engine needs it)"

    @on(Input.Submitted, "#url")
    def url_submitted(self) -> None:
        self.check_server()

    @work(exclusive=True, group="reach", exit_on_error=False)
    async def check_server(self) -> None:
        from evaluator.clients import check_backend, start_hint
        from synaptic_tui.redact import redact_url

        backend, url = self.backend(), self.query_one("#url", Input).value.strip()
        reach_label = self.query_one("#reach", Static)
        reach_label.update(f"checking {escape(redact_url(url))} ...")
        reach = await check_backend(backend, url)
        select = self.query_one("#model", Select)
        if not reach.reachable:
            reach_label.update(f"[red]not reachable[/]: {escape(str(reach.error))}\n{escape(start_hint(backend))}")
            select.set_options([])
            return
        models = reach.models or []
        reach_label.update(f"[green]reachable[/], {len(models)} model(s)")
        select.set_options([(m, m) for m in models])
        wanted = self.wanted_model if self.wanted_model in models else (models[0] if len(models) == 1 else None)
        if wanted:
            select.value = wanted

    @on(Button.Pressed, "#run")
    def run_pressed(self) -> None:
        self.action_run_eval()

    def settings_from_form(self):
        from evaluator.clients import OPENAI_URL
        from evaluator.prompts import load_prompt_set
        from evaluator.runner import new_settings

        serving = self.backend() == "serve"
        model = f"{self.run_dir.name}:{self.checkpoint}" if serving else self.query_one("#model", Select).value
        prompt_set = self.query_one("#prompt-set", Select).value
        if model is Select.NULL or not model:
            raise ValueError("pick a model (the server must be reachable and list it)")
        if prompt_set is Select.NULL or not prompt_set:
            raise ValueError("pick a prompt set")
        number = lambda wid, cast: cast(v) if (v := self.query_one(wid, Input).value.strip()) else None  # noqa: E731
        concurrency = number("#concurrency", int) or 4
        limit = number("#limit", int)
        temperature = number("#temperature", float) or 0.0
        max_tokens = number("#max-tokens", int)
        if concurrency < 1 or (limit is not None and limit < 1) or temperature < 0 or (max_tokens or 1) < 1:
            raise ValueError("concurrency, limit and max tokens must be at least 1, temperature at least 0")
        tags = [t.strip() for t in self.query_one("#tags", Input).value.split(",") if t.strip()]
        loaded = load_prompt_set(prompt_set)
        judge_model = self.query_one("#judge-model", Input).value.strip() or None
        judge_url = self.query_one("#judge-url", Input).value.strip() or None
        if judge_url and not judge_model:
            raise ValueError("a judge URL needs a judge model (its name as that server lists it)")
        settings = new_settings("openai" if serving else self.backend(), str(model), loaded,
                                url=self.query_one("#url", Input).value.strip() or None,
                                tags=tags, limit=limit, temperature=temperature, concurrency=concurrency,
                                max_tokens=max_tokens,
                                judge_model=judge_model, judge_url=(judge_url or OPENAI_URL) if judge_model else None)
        if not settings.case_ids:
            raise ValueError(f"no case in {Path(prompt_set).name} has the tags {', '.join(tags)}")
        if self.run_dir is not None:
            settings.run_id = self.run_dir.name
            settings.checkpoint = self.checkpoint
        if serving:
            from synaptic_tui.servers.targets import resolve_target

            target = resolve_target(f"{self.run_dir}:{self.checkpoint}", self.app.services.runs_dir)
            # The detached eval starts (or reuses) the server itself, so closing the app never leaves it half-done.
            settings.url, settings.serve, settings.runs_dir = "", target.portable_ref, str(self.app.services.runs_dir)
            settings.tool_format = target.tool_format
        return settings

    def action_run_eval(self) -> None:
        from evaluator.prompts import PromptSetError
        from evaluator.runner import create_eval, evals_root

        try:
            settings = self.settings_from_form()
        except (ValueError, PromptSetError) as exc:
            self.notify(str(exc), severity="error", title="Cannot run")
            return
        root = self.run_dir / "evals" if self.run_dir is not None else evals_root()
        try:
            eval_dir = create_eval(settings, root)
        except OSError as exc:
            self.notify(f"cannot write the eval under {root}: {exc.strerror or exc}", severity="error",
                        title="Cannot run")
            return
        launch_eval(eval_dir, settings.url)
        self.query_one(EvalResults).follow(eval_dir)
        message = f"Eval {eval_dir.name} started: {len(settings.case_ids)} cases."
        if settings.serve and self.query_one("#beside-base", Checkbox).value:
            from dataclasses import replace

            base = replace(settings, serve=f"{self.run_dir.resolve()}:base", model=f"{self.run_dir.name}:base",
                           checkpoint=None, tool_format=None)
            base_dir = create_eval(base, root)
            launch_eval(base_dir)
            message += f" The base model's: {base_dir.name} (ctrl+o, mark both, v compares)."
        self.notify(message)

    def action_past_evals(self) -> None:
        self.app.push_screen(EvalsScreen())


class EvalsScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("enter", "open", "Open", id="evals.open"),
        Binding("space", "mark", "Mark", id="evals.mark"),
        Binding("v", "compare", "Compare marked", id="evals.compare"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.paths: dict[str, Path] = {}
        self.marked: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Past evals (space marks two, v compares them)", classes="pane-title")
        yield DataTable(id="evals", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        from evaluator.runner import list_evals

        self.sub_title = "Past evals"
        table = self.query_one(DataTable)
        for key, label, width in (("eval", "Eval", 34), ("run", "Run", 26), ("model", "Model", 18),
                                  ("state", "State", 11), ("done", "Done", 7), ("pass", "Pass rate", 9)):
            table.add_column(label, key=key, width=width)
        evals = [info for root in eval_roots(self.app.services.runs_dir) for info in list_evals(root)]
        for info in sorted(evals, key=lambda e: e.eval_id, reverse=True):
            key = str(info.path)
            self.paths[key] = info.path
            table.add_row(info.eval_id, info.settings.run_id or "", info.settings.model, info.state,
                          f"{info.done}/{info.total}", f"{info.pass_rate:.0%}" if info.pass_rate is not None else "",
                          key=key)
        table.focus()

    def selected(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_open(self) -> None:
        key = self.selected()
        if key is not None:
            self.app.push_screen(EvalResultsScreen(self.paths[key]))

    def action_mark(self) -> None:
        key = self.selected()
        if key is None:
            return
        table = self.query_one(DataTable)
        if key in self.marked:
            self.marked.remove(key)
        else:
            self.marked = (self.marked + [key])[-2:]
        for row_key in table.rows:
            name = self.paths[str(row_key.value)].name
            table.update_cell(row_key, "eval", f"✓ {name}" if str(row_key.value) in self.marked else name)
        table.action_cursor_down()

    def action_compare(self) -> None:
        if len(self.marked) != 2:
            self.notify("Mark two evals with space, then press v.", severity="warning")
            return
        self.app.push_screen(EvalCompareScreen(self.paths[self.marked[0]], self.paths[self.marked[1]]))


class EvalResultsScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back", id="screen.back"),
                Binding("c", "chat", "Chat with this case", id="results.chat")]

    def __init__(self, eval_dir: Path) -> None:
        super().__init__()
        self.eval_dir = Path(eval_dir)

    def compose(self) -> ComposeResult:
        yield Header()
        yield EvalResults(id="eval-results")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.eval_dir.name
        self.query_one(EvalResults).follow(self.eval_dir)
        self.query_one("#results", DataTable).focus()

    def action_chat(self) -> None:
        """The highlighted case's messages, sent to the model the eval asked (and its base model, for a checkpoint)."""
        from evaluator.prompts import PromptSetError, load_prompt_set, load_tools_file
        from evaluator.runner import load_eval

        from synaptic_tui.chat import ChatSide, history_path
        from synaptic_tui.screens.chat import ChatCase, ChatScreen

        record = self.query_one(EvalResults).highlighted_record()
        if record is None:
            self.notify("No case yet.", severity="warning")
            return
        settings = load_eval(self.eval_dir).settings
        try:
            case = next(c for c in load_prompt_set(settings.prompt_set).cases if c.id == record.get("id"))
            tools = [] if settings.no_tools else (case.tools or (load_tools_file(settings.tools_file)[0]
                                                                 if settings.tools_file else []))
        except (PromptSetError, StopIteration, OSError) as exc:
            self.notify(f"Cannot read the case from {settings.prompt_set}: {exc}", severity="error")
            return
        chat_case = ChatCase(case.id, case.question, case.system, tools or None)
        runs_dir = self.app.services.runs_dir
        run_dir = runs_dir / settings.run_id if settings.run_id and (runs_dir / settings.run_id).is_dir() else None
        if settings.serve:
            base = None
            if settings.checkpoint and ":" in settings.serve:
                base = f"{settings.serve.rsplit(':', 1)[0]}:base"
            self.app.push_screen(ChatScreen(settings.serve, base=base, case=chat_case, send_case=True))
            return
        url = settings.url.rstrip("/") + ("/v1" if settings.backend == "ollama" else "")  # Ollama's OpenAI API
        side = ChatSide(settings.model, url=url, model=settings.model, tool_format=settings.tool_format,
                        history=history_path(runs_dir, run_dir, settings.model))
        self.app.push_screen(ChatScreen(side, case=chat_case, send_case=True))


class EvalCompareScreen(Screen):
    """Eval A against eval B: overall and per-tag pass-rate deltas, and the cases that flipped."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back", id="screen.back")]

    def __init__(self, a: Path, b: Path) -> None:
        super().__init__()
        self.a, self.b = Path(a), Path(b)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="compare-overall")
        yield DataTable(id="compare-tags", cursor_type="row")
        yield Static("", id="compare-flips")
        yield Footer()

    def on_mount(self) -> None:
        from evaluator.runner import compare_evals

        self.sub_title = f"{self.a.name} vs {self.b.name}"
        comparison = compare_evals(self.a, self.b)
        pct = lambda v: f"{v:.0%}" if v is not None else "-"  # noqa: E731
        delta = lambda v: f"{v:+.0%}" if v is not None else "-"  # noqa: E731
        overall = comparison["overall"]
        parts = "   ".join(f"{label} {pct(comparison[key]['a'])} -> {pct(comparison[key]['b'])} "
                           f"({delta(comparison[key]['delta'])})"
                           for key, label in (("tool_calls", "tool calls"), ("behavior", "behaviour"))
                           if comparison[key]["a"] is not None or comparison[key]["b"] is not None)
        self.query_one("#compare-overall", Static).update(
            f"A {escape(self.a.name)}: {pct(overall['a'])}   B {escape(self.b.name)}: {pct(overall['b'])}   "
            f"[b]{delta(overall['delta'])}[/]" + (f"\n{parts}" if parts else ""))
        table = self.query_one("#compare-tags", DataTable)
        for key, label, width in (("tag", "Tag", 24), ("a", "A", 6), ("b", "B", 6), ("delta", "Delta", 7)):
            table.add_column(label, key=key, width=width)
        for tag, row in comparison["per_tag"].items():
            change = row["delta"]
            style = "green" if change and change > 0 else "red" if change and change < 0 else ""
            table.add_row(tag, pct(row["a"]), pct(row["b"]), Text(delta(change), style=style), key=tag)
        ids = lambda entries: escape(", ".join(e["id"] for e in entries)) or "none"  # noqa: E731
        checks = lambda entries: escape(", ".join(f"{e['id']} {e['check']}" for e in entries)) or "none"  # noqa: E731
        self.query_one("#compare-flips", Static).update(
            f"[green]fixed[/] (failed in A, pass in B): {ids(comparison['fixed'])}\n"
            f"[red]broken[/] (passed in A, fail in B): {ids(comparison['broken'])}\n"
            f"[green]behaviour checks fixed[/]: {checks(comparison['behavior_fixed'])}\n"
            f"[red]behaviour checks broken[/]: {checks(comparison['behavior_broken'])}")
