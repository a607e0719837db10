"""Export and upload a checkpoint: run, checkpoint, formats, repo id, the model card, then progress and links.

The export is `python -m trainers.export` (it imports torch); the upload is
huggingface_hub in a thread. Both run as workers of the app, not of this
screen, so going back to the run view does not stop them; their progress is
shown here while the screen is open.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import (Button, Checkbox, Footer, Header, Input, Label, Log, Markdown, ProgressBar, Select,
                             SelectionList, Static)
from textual.widgets.selection_list import Selection

from synaptic_tui.config import EXPORT_FORMATS
from synaptic_tui.runs import RunInfo, list_runs, load_run

DEFAULT_FORMATS = ("lora",)


class UploadScreen(Screen):
    """The export / upload form, prefilled from the run view's highlighted checkpoint when opened from there."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("p", "preview", "Preview card", id="upload.preview"),
        Binding("x", "export_only", "Export", id="upload.export"),
        Binding("u", "upload", "Upload", id="upload.upload"),
    ]

    class Progress(Message):
        def __init__(self, text: str, advance: int = 0, total: int | None = None) -> None:
            super().__init__()
            self.text, self.advance, self.total = text, advance, total

    class Finished(Message):
        def __init__(self, ok: bool, text: str) -> None:
            super().__init__()
            self.ok, self.text = ok, text

    def __init__(self, run_dir: Path | None = None, checkpoint: str | None = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir) if run_dir else None
        self.checkpoint = checkpoint
        self.busy = False

    def compose(self) -> ComposeResult:
        from synaptic_tui.exporting import capabilities

        runs = [r for r in list_runs(self.app.services.runs_dir) if r.checkpoints() and not r.legacy]
        if self.run_dir is not None and all(r.path != self.run_dir for r in runs):
            run = load_run(self.run_dir)
            runs = ([run] if run else []) + runs
        if self.run_dir is None and runs:
            self.run_dir = runs[0].path  # the newest run with checkpoints
        reasons = capabilities()
        yield Header()
        with Horizontal(id="upload-body"):
            with VerticalScroll(id="upload-form"):
                yield Label("Run")
                yield Select([(r.run_id, str(r.path)) for r in runs], id="upload-run", allow_blank=True,
                             value=str(self.run_dir) if self.run_dir else Select.NULL, prompt="choose a run")
                yield Label("Checkpoint")
                yield Select([], id="upload-checkpoint", allow_blank=True, prompt="choose a run first")
                yield Label("Formats")
                yield SelectionList[str](
                    *(Selection(fmt if reasons[fmt] is None else f"{fmt} ({reasons[fmt]})", fmt,
                                fmt in DEFAULT_FORMATS, disabled=reasons[fmt] is not None)
                      for fmt in EXPORT_FORMATS), id="upload-formats")
                yield Label("Repo id (owner/name)")
                yield Input(placeholder="owner/name", id="upload-repo")
                yield Checkbox("Private repo", value=True, id="upload-private")
                with Horizontal(id="upload-buttons"):
                    yield Button("Preview card", id="upload-preview-button")
                    yield Button("Export", id="upload-export-button")
                    yield Button("Upload", id="upload-go", variant="primary")
                yield Static("", id="upload-note")
            with Vertical(id="upload-side"):
                yield Static("Model card", classes="pane-title")
                with VerticalScroll(id="upload-card-scroll"):
                    yield Markdown("Press **p** to preview the model card.", id="upload-card")
                yield ProgressBar(id="upload-progress", show_eta=False)
                yield Log(id="upload-log", max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "Export and upload"
        self.query_one("#upload-progress", ProgressBar).display = False  # an idle bar would pulse forever
        if self.run_dir is not None:
            self._fill_checkpoints(self.run_dir)
        else:
            self.note(f"No run with checkpoints in {self.app.services.runs_dir} yet: train one first (n).")
        self._fill_repo()

    # --- form ------------------------------------------------------------------

    def _run(self) -> RunInfo | None:
        value = self.query_one("#upload-run", Select).value
        return load_run(Path(value)) if isinstance(value, str) else None

    def _fill_checkpoints(self, run_dir: Path) -> None:
        from synaptic_tui.exporting import ExportError, resolve_checkpoint

        run = load_run(run_dir)
        select = self.query_one("#upload-checkpoint", Select)
        if run is None:
            select.set_options([])
            return
        try:
            best = resolve_checkpoint(run, "best")
        except ExportError:
            best = None
        options = [(f"{c.name}{'  (best)' if c.name == best else ''}", c.name) for c in run.checkpoints()]
        select.set_options(options)
        select.prompt = "choose a checkpoint" if options else "this run has no checkpoint"
        names = [v for _, v in options]
        wanted = self.checkpoint if self.checkpoint in names else best or (names[-1] if names else None)
        if wanted:
            select.value = wanted

    def _fill_repo(self) -> None:
        from synaptic_tui.upload import default_repo_id

        run = self._run()
        repo = self.query_one("#upload-repo", Input)
        if run is not None and not repo.value:
            repo.value = default_repo_id(run) or ""

    @on(Select.Changed, "#upload-run")
    def _run_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self._fill_checkpoints(Path(event.value))
            self._fill_repo()

    def _choices(self) -> tuple[RunInfo, str, list[str]] | None:
        run = self._run()
        checkpoint = self.query_one("#upload-checkpoint", Select).value
        formats = list(self.query_one("#upload-formats", SelectionList).selected)
        problem = ("Choose a run." if run is None else "Choose a checkpoint." if not isinstance(checkpoint, str)
                   else "Choose at least one format." if not formats else None)
        if problem:
            self.note(problem, error=True)
            return None
        return run, str(checkpoint), formats

    def _plan(self):
        from synaptic_tui.exporting import ExportError
        from synaptic_tui.upload import UploadError, plan_upload

        choices = self._choices()
        if choices is None:
            return None
        run, checkpoint, formats = choices
        try:
            return plan_upload(run, checkpoint, formats, self.query_one("#upload-repo", Input).value.strip() or None,
                               private=self.query_one("#upload-private", Checkbox).value)
        except (UploadError, ExportError) as exc:
            self.note(str(exc), error=True)
            return None

    def note(self, text: str, error: bool = False) -> None:
        self.query_one("#upload-note", Static).update(f"[red]{escape(text)}[/]" if error else escape(text))

    # --- actions ---------------------------------------------------------------

    def action_preview(self) -> None:
        plan = self._plan()
        if plan is None:
            return
        self.query_one("#upload-card", Markdown).update(plan.card)
        self.note(plan.describe())

    def action_export_only(self) -> None:
        choices = self._choices()
        if choices is not None and not self._refuse_if_busy():
            run, checkpoint, formats = choices
            self._start(run, checkpoint, formats, None)

    def action_upload(self) -> None:
        from synaptic_tui.screens.new_run import ConfirmScreen

        plan = self._plan()
        if plan is None or self._refuse_if_busy():
            return
        self.query_one("#upload-card", Markdown).update(plan.card)

        def confirmed(yes: bool) -> None:
            if yes:
                self._start(plan.run, plan.checkpoint, [i.fmt for i in plan.items], plan)

        exports = f" (exporting {', '.join(plan.to_export)} first)" if plan.to_export else ""
        self.app.push_screen(ConfirmScreen(
            f"Upload {len(plan.items)} format(s) of {plan.checkpoint} to {plan.repo_id} "
            f"({'private' if plan.private else 'public'}){exports}?"), confirmed)

    def _refuse_if_busy(self) -> bool:
        if self.busy:
            self.notify("An export or upload is already running here.", severity="warning")
        return self.busy

    @on(Button.Pressed, "#upload-preview-button")
    def _preview_pressed(self) -> None:
        self.action_preview()

    @on(Button.Pressed, "#upload-export-button")
    def _export_pressed(self) -> None:
        self.action_export_only()

    @on(Button.Pressed, "#upload-go")
    def _upload_pressed(self) -> None:
        self.action_upload()

    # --- the job ---------------------------------------------------------------

    def _start(self, run: RunInfo, checkpoint: str, formats: list[str], plan) -> None:
        self.busy = True
        self.query_one("#upload-log", Log).clear()
        self.note("working...")
        # The app owns the worker: leaving this screen does not cancel the export or the upload.
        self.app.run_worker(self._job(run, checkpoint, formats, plan), group="upload", exit_on_error=False)

    async def _job(self, run: RunInfo, checkpoint: str, formats: list[str], plan) -> None:
        from synaptic_tui.hf_token import find_hf_token, redact

        try:
            await self._export_and_upload(run, checkpoint, formats, plan)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the form must not stay busy
            self.post_message(self.Finished(False, redact(f"{type(exc).__name__}: {exc}", find_hf_token()[0])))

    async def _export_and_upload(self, run: RunInfo, checkpoint: str, formats: list[str], plan) -> None:
        from synaptic_tui.exporting import ExportRequest, run_export_async
        from synaptic_tui.upload import UploadError, refresh_plan, upload

        to_export = plan.to_export if plan is not None else formats
        steps = len(to_export) + (len(plan.items) + 2 if plan is not None else 0)
        self.post_message(self.Progress(f"{run.run_id} {checkpoint}", total=max(steps, 1)))
        if to_export:
            def on_event(event: dict[str, Any]) -> None:
                if event.get("event") == "step":
                    self.post_message(self.Progress(f"[{event.get('format') or 'export'}] {event.get('message')}"))
                elif event.get("event") == "done":
                    record = event.get("record") or {}
                    self.post_message(self.Progress(f"{event.get('format')}: verified, {event.get('path')}", 1))
                    if record.get("pre_tokenizer_fallback"):
                        self.post_message(self.Progress(f"  pre-tokenizer: not known to llama.cpp, "
                                                        f"{record['pre_tokenizer_fallback']!r} used"))
                    if record.get("ollama_create"):
                        self.post_message(self.Progress(f"  ollama: {record['ollama_create']}"))

            result = await run_export_async(ExportRequest(run, checkpoint, to_export), on_event=on_event)
            if result.exit_code != 0:
                self.post_message(self.Finished(False, f"Export failed: {result.error}"))
                return
        if plan is None:
            self.post_message(self.Finished(True, f"Exported {', '.join(formats)} of {checkpoint}."))
            return
        plan = refresh_plan(plan)

        def say(text: str) -> None:
            self.app.call_from_thread(self.post_message, self.Progress(text, 1 if text.startswith(
                ("repo ", "model card:")) or ": http" in text else 0))

        try:
            commits = await asyncio.to_thread(upload, plan, say)
        except UploadError as exc:
            self.post_message(self.Finished(False, str(exc)))
            return
        self.post_message(self.Finished(True, f"Uploaded to {plan.repo_id}: " + ", ".join(commits)))

    def on_upload_screen_progress(self, message: Progress) -> None:
        bar = self.query_one("#upload-progress", ProgressBar)
        if message.total is not None:
            bar.display = True
            bar.update(total=message.total, progress=0)
        if message.advance:
            bar.advance(message.advance)
        self.query_one("#upload-log", Log).write_line(message.text)

    def on_upload_screen_finished(self, message: Finished) -> None:
        self.busy = False
        bar = self.query_one("#upload-progress", ProgressBar)
        if message.ok and bar.total:
            bar.update(progress=bar.total)
        self.query_one("#upload-log", Log).write_line(message.text)
        self.note(message.text, error=not message.ok)
        self.notify(message.text, severity="information" if message.ok else "error", timeout=8)
