"""The Textual application: wires screens, bindings and services together, nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from synaptic_tui.paths import display_path, shipped_dir
from synaptic_tui.services import Services


@dataclass(frozen=True)
class Action:
    """One thing the user can do from the home screen, the palette and the help."""

    name: str
    title: str
    key: str
    help: str
    on_bar: bool = True  # listed in the home screen's bar (which holds 80 columns' worth); always in help and palette


ACTIONS = (
    Action("new_run", "New run", "n", "Pick platform and method, validate a config, launch training"),
    Action("runs", "Runs", "r", "Every run in the runs dir, live"),
    Action("upload", "Upload", "u", "Export a checkpoint and push it to the Hugging Face Hub"),
    Action("evaluate", "Evaluate", "e", "Run a prompt set against Ollama or an OpenAI-compatible server"),
    Action("chat", "Chat", "c", "Talk to a served checkpoint or model, beside its base model"),
    Action("servers", "Servers", "s", "Local servers of checkpoints and models: what each serves; stop them",
           on_bar=False),
    Action("pipelines", "Pipelines", "p", "Train, pick the best, export and evaluate as one resumable job"),
    Action("doctor", "Doctor", "d", "Check Python, extras, GPU, MLX, disk, servers and HF token"),
)


class SynapticApp(App[int]):
    """synaptic-tui. Takes its services from the caller so tests run it on temp dirs."""

    TITLE = "synaptic-tui"
    CSS_PATH = str(shipped_dir("styles") / "app.tcss")
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("f1", "help", "Help", id="app.help"),
        Binding("question_mark", "help", "Help", show=False, id="app.help_alt"),
    ]

    def __init__(self, services: Services, **kwargs) -> None:
        super().__init__(**kwargs)
        self.services = services
        self.sub_title = display_path(services.runs_dir)
        # Animations cost frames over SSH and help nobody in a training monitor.
        self.animation_level = "none"

    def get_default_screen(self) -> Screen:
        # The home screen is the base of the stack, so no blank screen is ever drawn first.
        from synaptic_tui.screens.home import HomeScreen

        return HomeScreen()

    def make_screen(self, name: str) -> Screen:
        from synaptic_tui.screens.doctor import DoctorScreen
        from synaptic_tui.screens.new_run import NewRunScreen
        from synaptic_tui.screens.runs import RunsScreen

        if name == "new_run":
            return NewRunScreen()
        if name == "runs":
            return RunsScreen()
        if name == "doctor":
            return DoctorScreen()
        if name == "pipelines":
            from synaptic_tui.screens.pipelines import PipelinesScreen

            return PipelinesScreen()
        if name == "upload":
            from synaptic_tui.screens.upload import UploadScreen

            return UploadScreen()
        if name == "evaluate":
            from synaptic_tui.screens.evaluate import EvaluateScreen

            return EvaluateScreen()
        if name == "servers":
            from synaptic_tui.screens.servers import ServersScreen

            return ServersScreen()
        if name == "chat":
            from synaptic_tui.screens.chat import ChatScreen

            return ChatScreen()
        raise KeyError(name)

    def action_open(self, name: str) -> None:
        screen = self.make_screen(name)
        if type(self.screen) is type(screen):
            return
        self.push_screen(screen)

    def start_run(self, config: dict) -> None:
        """Create the run and launch its trainer from the app, so leaving the screen cannot stop it."""
        self.run_worker(lambda: self._start_run(config), thread=True, group="launch", exit_on_error=False)

    def _start_run(self, config: dict) -> None:
        from synaptic_tui.jobs import launch_training
        from synaptic_tui.runs import create_run, slugify

        try:
            slug = (config.get("output") or {}).get("run_name") or slugify(str(config["model"]["name"]))
            run_dir = create_run(self.services.runs_dir, config, str(config.get("method", "sft")), slug)
            launch_training(run_dir)
        except Exception as exc:  # shown, never fatal to the app
            self.call_from_thread(self.notify, f"Launch failed: {exc}", severity="error")
            return
        self.call_from_thread(self.show_run, run_dir)

    def serve(self, ref: str, reply: Callable[[str, Any], None]) -> None:
        """Start (or reuse) a server for RUN[:CHECKPOINT] | MODEL from the App, so leaving a screen never stops one
        half-way up; `reply` gets ("progress", text), then ("ready", server) or ("failed", reason)."""
        self.run_worker(self._serve(ref, reply), group="serve", exit_on_error=False)

    async def _serve(self, ref: str, reply: Callable[[str, Any], None]) -> None:
        from synaptic_tui.servers import ServeError
        from synaptic_tui.servers.launch import ensure_server
        from synaptic_tui.servers.targets import TargetError, resolve_target

        try:
            target = resolve_target(ref, self.services.runs_dir)
            server, _ = await ensure_server(target, self.services.runs_dir,
                                            say=lambda message: reply("progress", message))
        except (ServeError, TargetError) as exc:
            reply("failed", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - shown in the screen that asked, never fatal to the app
            reply("failed", f"{type(exc).__name__}: {exc}")
            return
        reply("ready", server)

    def show_run(self, run_dir) -> None:
        from synaptic_tui.screens.run_view import RunScreen

        self.push_screen(RunScreen(run_dir))

    def action_help(self) -> None:
        from synaptic_tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        # The keys of the screen and its focused widget, without the app-wide
        # ones the help lists anyway; one line per key.
        # The screen's own keys come first, then those of the focused widget.
        screen = self.screen
        active = [a for a in screen.active_bindings.values() if a.node is not self and a.binding.description]
        active.sort(key=lambda a: a.node is not screen)
        keys: dict[str, str] = {}
        for item in active:
            keys.setdefault(self.get_key_display(item.binding), item.binding.description)
        self.push_screen(HelpScreen(list(keys.items())))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for action in ACTIONS:
            yield SystemCommand(f"{action.title}  [{action.key}]", action.help, lambda n=action.name: self.action_open(n))
        yield SystemCommand("Help  [F1]", "Keys and what each screen does", self.action_help)
        yield from super().get_system_commands(screen)
