"""The local servers `serve`, evals and chats started: what each serves, on which engine, its state; stop or chat.

Servers outlive the app (they run detached), so this is where they are found
again and stopped; a crashed one shows the last line of its log.
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from synaptic_tui.paths import display_path
from synaptic_tui.servers.launch import Server, list_servers

STATE_STYLES = {"ready": "green", "starting": "yellow", "failed": "red", "stopped": "dim"}


class ServersScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="screen.back"),
        Binding("enter", "chat", "Chat with it", id="servers.chat"),
        Binding("x", "stop", "Stop", id="servers.stop"),
        Binding("X", "stop_all", "Stop all", id="servers.stop_all"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.servers: dict[str, Server] = {}
        self._shown: list[tuple[str, str]] | None = None  # what the table shows: rebuilt only when it changes

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Local servers (they keep running when the app closes; x stops one)", classes="pane-title")
        yield DataTable(id="servers", cursor_type="row", zebra_stripes=True)
        yield Static("", id="server-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Servers"
        table = self.query_one(DataTable)
        for key, label, width in (("id", "Server", 42), ("engine", "Engine", 12), ("state", "State", 8),
                                  ("url", "URL", 26), ("serves", "Serves", 40)):
            table.add_column(label, key=key, width=width)
        self.refresh_list()
        self.set_interval(self.app.services.refresh_seconds, self.refresh_list)
        table.focus()

    def refresh_list(self) -> None:
        table = self.query_one(DataTable)
        found = {s.server_id: s for s in list_servers(self.app.services.runs_dir)}
        shown = [(s.server_id, s.state) for s in found.values()]
        if shown == self._shown:
            return
        self.servers, self._shown = found, shown
        cursor = table.cursor_row
        table.clear()
        for server in found.values():
            table.add_row(server.server_id, server.engine,
                          Text(server.state, style=STATE_STYLES.get(server.state, "")), server.url, server.label,
                          key=server.server_id)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))
        self.show_detail()

    def selected(self) -> Server | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return self.servers.get(str(table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def show_detail(self) -> None:
        server = self.selected()
        if server is None:
            text = "No servers. Evaluate or chat with a checkpoint (run view: e, t) and one starts here."
        else:
            tools = (f"tool calls parsed by the server ({server.tool_parser})" if server.tool_parser
                     else f"tool calls read from the text ({server.tool_format or 'every format'})")
            text = f"model id {escape(server.model_id)}   {escape(tools)}\nlog {escape(display_path(server.log_path))}"
            if server.error:
                text += f"\n[red]{escape(server.error)}[/]"
        self.query_one("#server-detail", Static).update(text)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_chat()

    def action_chat(self) -> None:
        from synaptic_tui.screens.chat import ChatScreen, chat_refs_for
        from synaptic_tui.servers.targets import TargetError, resolve_target

        server = self.selected()
        if server is None or not server.live:
            self.notify("Pick a running server.", severity="warning")
            return
        try:
            target = resolve_target(server.ref, self.app.services.runs_dir)
        except TargetError as exc:
            self.notify(str(exc), severity="error")
            return
        if target.run_dir is not None and target.checkpoint:
            primary, base = chat_refs_for(target.run_dir, target.checkpoint)
            self.app.push_screen(ChatScreen(primary, base=base))
        else:
            self.app.push_screen(ChatScreen(target.portable_ref))

    def action_stop(self) -> None:
        server = self.selected()
        if server is None or not server.live:
            self.notify("That server is not running.", severity="warning")
            return
        self.stop([server])

    def action_stop_all(self) -> None:
        self.stop([s for s in self.servers.values() if s.live])

    class Stopped(Message):
        def __init__(self, count: int) -> None:
            super().__init__()
            self.count = count

    @work(thread=True, group="stop-servers", exit_on_error=False)
    def stop(self, servers: list[Server]) -> None:
        """Stopping waits for each to exit (up to 20 s): a thread, so the screen keeps drawing meanwhile."""
        from synaptic_tui.servers.launch import stop_server

        for server in servers:
            stop_server(server)
        self.post_message(self.Stopped(len(servers)))

    def on_servers_screen_stopped(self, event: Stopped) -> None:
        self.notify(f"Stopped {event.count} server{'s' if event.count != 1 else ''}.")
        self.refresh_list()
