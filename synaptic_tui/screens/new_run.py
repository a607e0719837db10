"""The New-run screen: platform, method and config; the resolved config and its pre-flight; Launch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Label, RadioButton, RadioSet, Select, Static

from synaptic_tui.paths import display_path, shipped_dir

PLATFORMS = (("cpu", "CPU (smoke runs)"), ("cuda", "NVIDIA CUDA"), ("mlx", "Apple MLX"))
METHODS = (("sft", "SFT"), ("kto", "KTO"))
LEVEL_STYLE = {"error": "red", "warning": "yellow", "info": "dim"}
EMBEDDED = "embedded default"


def discover_configs(cwd: Path) -> list[Path]:
    """Configs a user is likely to mean: ./configs, ./*.yaml, and the shipped examples."""
    found: list[Path] = []
    for folder in (cwd / "configs", cwd, shipped_dir("examples") / "configs"):
        if folder.is_dir():
            found += sorted(p for p in folder.glob("*.y*ml") if p.is_file())
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path.resolve(), None)
    return list(unique)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no with the keyboard: y or enter confirms, n or escape declines."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(self.question, id="confirm-question")
            yield Static("[b]y[/] yes    [b]n[/] no", id="confirm-keys")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class NewRunScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("p", "preflight", "Pre-flight", id="new_run.preflight"),
        Binding("l", "launch", "Launch", id="new_run.launch"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] | None = None
        self.report = None
        self.configs = discover_configs(Path.cwd())
        # What doctor found per platform: (available, its summary); filled in by a worker.
        self.found: dict[str, tuple[bool, str]] = {}
        self._loaded: tuple[Any, ...] | None = None  # (config, platform, method) last resolved

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with VerticalScroll(id="new-run-form"):
                yield Label("Platform", classes="pane-title")
                with RadioSet(id="platform"):
                    for value, label in PLATFORMS:
                        yield RadioButton(label, value=value == "cpu", name=value)
                yield Static("", id="platform-note")
                yield Label("Method", classes="pane-title")
                with RadioSet(id="method"):
                    for value, label in METHODS:
                        yield RadioButton(label, value=value == "sft", name=value)
                yield Label("Config", classes="pane-title")
                options = [(EMBEDDED, EMBEDDED)] + [(display_path(p), str(p)) for p in self.configs]
                yield Select(options, value=EMBEDDED, allow_blank=False, id="config")
                yield Button("Launch (l)", id="launch", variant="primary")
            with VerticalScroll(id="new-run-detail"):
                yield Label("Pre-flight", classes="pane-title")
                yield Static("Checking...", id="preflight-report")
                yield Label("Resolved config", classes="pane-title")
                yield Static("", id="resolved", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "New run"
        self.config_changed()
        self.detect_platforms()

    # --- choices -----------------------------------------------------------------------

    def choice(self, radio_id: str) -> str:
        pressed = self.query_one(f"#{radio_id}", RadioSet).pressed_button
        return pressed.name if pressed is not None else ""

    def pick(self, radio_id: str, name: str) -> None:
        for button in self.query_one(f"#{radio_id}", RadioSet).query(RadioButton):
            if button.name == name and not button.value:
                button.value = True

    @work(exclusive=True, group="platforms", exit_on_error=False)
    async def detect_platforms(self) -> None:
        checks = {c.name: c for c in await self.app.services.doctor(self.app.services.runs_dir)}
        for platform, name in (("cuda", "CUDA"), ("mlx", "MLX")):
            check = checks.get(name)
            if check is not None:
                self.found[platform] = (check.status == "ok", check.summary)
        self.show_platform_note()
        if self.file_choice()[0] == "auto":  # the config leaves it to this machine
            self.pick("platform", self.auto_platform())

    def auto_platform(self) -> str:
        # As the trainers resolve `platform: auto`: CUDA when there is a GPU, else CPU.
        return "cuda" if self.found.get("cuda", (False, ""))[0] else "cpu"

    def show_platform_note(self) -> None:
        platform = self.choice("platform")
        note = {
            "cpu": "Trains with transformers + PEFT in fp32: slow, for smoke runs and tests.",
            "cuda": "TRL + PEFT, or Unsloth when installed (engine: auto).",
            "mlx": "mlx-lm LoRA (or DoRA, full) in unified memory; on Linux with mlx[cpu]. KTO is not offered on MLX: "
                   "mlx-lm has no KTO trainer.",
        }[platform]
        if platform in self.found:
            available, summary = self.found[platform]
            note += f"\n[{'green' if available else 'yellow'}]found:[/] {escape(summary)}"
        elif platform != "cpu":
            note += "\n[dim]checking this machine...[/]"
        self.query_one("#platform-note", Static).update(note)

    def file_choice(self) -> tuple[str | None, str | None]:
        """(platform, method) as the selected config file says, before the radio buttons override them."""
        from synaptic_tui.config import ConfigError, load_config

        selected = self.query_one("#config", Select).value
        if selected == EMBEDDED:
            return "auto", "sft"
        try:
            config = load_config(selected)
        except ConfigError:
            return None, None
        return config.platform, config.method

    @on(Select.Changed, "#config")
    def config_changed(self) -> None:
        # A config's own platform and method become the choices; the buttons then override them.
        platform, method = self.file_choice()
        if method:
            self.pick("method", method)
        if platform:
            self.pick("platform", self.auto_platform() if platform == "auto" else platform)
        self.choices_changed()

    @on(RadioSet.Changed)
    def choices_changed(self) -> None:
        self.show_platform_note()
        # Picking buttons for a new config sends Changed messages of its own: resolve each state once.
        state = (self.query_one("#config", Select).value, self.choice("platform"), self.choice("method"))
        if state != self._loaded:
            self._loaded = state
            self.reload()

    def overrides(self) -> list[str]:
        return [f"platform={self.choice('platform')}", f"method={self.choice('method')}"]

    # --- config and pre-flight --------------------------------------------------------

    def reload(self) -> None:
        from synaptic_tui.config import ConfigError, config_to_dict, default_config, load_config

        selected = self.query_one("#config", Select).value
        try:
            if selected == EMBEDDED:
                config = config_to_dict(load_config(None, self.overrides(), base=config_to_dict(default_config())))
            else:
                config = config_to_dict(load_config(selected, self.overrides()))
        except ConfigError as exc:
            self.config = None
            self.query_one("#resolved", Static).update("")
            self.query_one("#preflight-report", Static).update(f"[red]{escape(str(exc))}[/]")
            return
        self.config = config
        self.show_config()
        self.action_preflight()

    def show_config(self) -> None:
        import yaml

        shown = {**self.config}
        for section, key in (("dataset", "path"), ("eval", "prompt_set"), ("model", "name")):
            value = (shown.get(section) or {}).get(key)
            if isinstance(value, str) and value.startswith("/"):
                shown[section] = {**shown[section], key: display_path(value)}
        self.query_one("#resolved", Static).update(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True))

    def action_preflight(self) -> None:
        if self.config is not None:
            self.report = None
            self.query_one("#preflight-report", Static).update("Checking model, data, memory and disk...")
            self.run_preflight(dict(self.config))

    @work(thread=True, exclusive=True, group="preflight", exit_on_error=False)
    def run_preflight(self, config: dict[str, Any]) -> None:
        try:
            report = self.app.services.preflight(config, self.app.services.runs_dir)
        except Exception as exc:  # shown on the screen; the app stays up
            self.app.call_from_thread(self.show_report, config, None, f"[red]pre-flight failed: {escape(str(exc))}[/]")
            return
        self.app.call_from_thread(self.show_report, config, report, None)

    def show_report(self, config: dict[str, Any], report: Any, failure: str | None) -> None:
        # A thread worker cannot be stopped: one checking a config the user has since changed
        # finishes anyway, and its report must not stand for the config now on screen.
        if config != self.config:
            return
        widget = self.query_one("#preflight-report", Static)
        if report is None:
            widget.update(failure or "")
            return
        self.report = report
        lines = [escape(line) for line in report.format().splitlines() if not line.startswith(("error", "warning", "info"))]
        for finding in report.findings:
            style = LEVEL_STYLE[finding.level]
            lines.append(f"[{style}]{finding.level}[/] {finding.topic}: {escape(finding.message)}")
        verdict = ("[red]errors: fix them before launching[/]" if report.errors
                   else "[yellow]warnings: launching asks to confirm[/]" if report.warnings
                   else "[green]ready: press l to launch[/]")
        widget.update("\n".join([verdict, *lines]))

    # --- launch -------------------------------------------------------------------------

    @on(Button.Pressed, "#launch")
    def launch_pressed(self) -> None:
        self.action_launch()

    def action_launch(self) -> None:
        report = self.report
        if self.config is None or report is None:
            self.notify("Wait for the pre-flight to finish.", severity="warning")
            return
        if report.errors:
            self.notify(f"Pre-flight found {len(report.errors)} error(s): nothing launched.", severity="error")
            return
        if report.warnings:
            question = f"Launch despite {len(report.warnings)} pre-flight warning(s)?"
            self.app.push_screen(ConfirmScreen(question), lambda yes: yes and self.app.start_run(self.config))
            return
        self.app.start_run(self.config)
