"""A real OpenAI-compatible server on 127.0.0.1 (HTTP/1.1, keep-alive, SSE streams), for tests.

Each model it serves is a function from the request body to the assistant's message. Two kinds:
`judge_by_rubric` reads the behaviour and the reply out of the evaluator's judge prompt and answers
yes or no by a reading rule per kind of behaviour (as a careful reader would, on these fixtures), and
`scripted` answers a model-under-test's questions from a table.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Answer = Callable[[dict[str, Any]], dict[str, Any]]  # request body -> {"content": ..., "tool_calls": [...]}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client closing a kept-alive connection
            super().handle_error(request, client_address)


def _section(text: str, start: str, end: str) -> str:
    begin = text.find(start)
    if begin == -1:
        return ""
    begin += len(start)
    stop = text.find(end, begin)
    return text[begin:stop if stop != -1 else len(text)]


def _delegates(calls: list[dict[str, Any]]) -> bool:
    return any(c.get("name", "").endswith("executePrompt") for c in calls)


# (words in the behaviour, whether the reply shows it): the first whose words appear decides.
READING_RULES: list[tuple[str, Callable[[str, list[dict[str, Any]]], bool]]] = [
    ("toolContext", lambda reply, calls: any(
        re.search(r"\b(because|so that)\b", str((c.get("arguments") or {}).get("context", {}).get("toolContext", "")))
        for c in calls)),
    ("without giving any reason", lambda reply, calls: "because" not in reply.lower()),
    ("without a stated criterion", lambda reply, calls: "because" not in reply.lower()),
    ("without saying why", lambda reply, calls: "because" not in reply.lower()),
    ("instead of delegating", lambda reply, calls: len(reply) > 200 and not _delegates(calls)),
    ("asks", lambda reply, calls: "?" in reply and bool(
        re.search(r"\b(which|what|would you|do you|should i|how|anything else)\b", reply, re.I))),
    ("nothing was found", lambda reply, calls: bool(
        re.search(r"\b(no notes|nothing|no results|could not find|couldn't find)\b", reply, re.I))),
    ("alternatives", lambda reply, calls: bool(re.search(r"\b(instead|alternatively|you could)\b", reply, re.I))),
    ("other ways", lambda reply, calls: bool(re.search(r"\b(instead|alternatively|you could)\b", reply, re.I))),
    ("presents the results", lambda reply, calls: sum(line.startswith("- ") for line in reply.splitlines()) >= 2),
    ("what went wrong", lambda reply, calls: bool(re.search(r"\b(because|failed|error)\b", reply, re.I))),
    ("confirms what was done", lambda reply, calls: bool(
        re.search(r"\b(done|created|moved|finished)\b", reply, re.I))),
    # explains / reasons / weighs / says why: a reason is given.
    ("why", lambda reply, calls: "because" in reply.lower()),
    ("reasons", lambda reply, calls: "because" in reply.lower()),
]


def judge_by_rubric(body: dict[str, Any]) -> dict[str, Any]:
    """Reads the evaluator's judge prompt: the behaviour, the reply text, its tool calls; answers by rule."""
    prompt = body["messages"][-1]["content"]
    behaviour = _section(prompt, "Behaviour: the reply ", ".\n\n")
    reply = _section(prompt, "Reply text:\n", "\n\nTool calls:\n")
    reply = "" if reply == "(none)" else reply
    raw_calls = _section(prompt, "Tool calls:\n", "\n\nDoes the reply")
    calls = [] if raw_calls.strip() == "(none)" else json.loads(raw_calls)
    for words, shows in READING_RULES:
        if words in behaviour:
            present = shows(reply, calls)
            return {"content": json.dumps({"answer": "yes" if present else "no",
                                           "reason": f"read by the {words!r} rule"})}
    return {"content": f"I have no way to grade {behaviour!r}"}


def scripted(replies: dict[str, Any], default: dict[str, Any] | None = None) -> Answer:
    """Answers by the last user message: a reply, or a list of replies given in turn (for repeats)."""
    turns: dict[str, int] = {}
    lock = threading.Lock()

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        question = body["messages"][-1]["content"]
        reply = replies.get(question, default or {"content": "I am not sure."})
        if isinstance(reply, list):
            with lock:
                turn = turns.get(question, 0)
                turns[question] = turn + 1
            reply = reply[turn % len(reply)]
        return reply
    return answer


class OpenAIServer:
    def __init__(self, models: dict[str, Answer]):
        self.models = models
        self.requests: list[dict[str, Any]] = []  # chat bodies, by model, in arrival order
        self.headers: list[dict[str, str]] = []
        self.garbage = False  # answer every chat with text no judge parser can read as a verdict
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    server._json(self, 200, {"object": "list", "data": [
                        {"id": name, "object": "model", "created": 0, "owned_by": "loopback"}
                        for name in server.models]})
                else:
                    server._json(self, 404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path != "/v1/chat/completions":
                    return server._json(self, 404, {"error": {"message": f"no route {self.path}"}})
                answer = server.models.get(body.get("model"))
                if answer is None:
                    return server._json(self, 404, {"error": {"message": f"model {body.get('model')!r} not found"}})
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                message = {"content": "Perhaps."} if server.garbage else answer(body)
                server._answer(self, body, message)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def asked(self, model: str) -> list[dict[str, Any]]:
        return [b for b in self.requests if b.get("model") == model]

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _json(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], message: dict[str, Any]) -> None:
        calls = [{"id": f"call_{i}", "type": "function",
                  "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                 for i, c in enumerate(message.get("tool_calls") or [])]
        content = message.get("content", "")
        finish = "tool_calls" if calls else "stop"
        usage = {"prompt_tokens": 12, "completion_tokens": max(1, len(content.split())), "total_tokens": 0}
        if not body.get("stream"):
            reply = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
            return self._json(handler, 200, {"id": "chatcmpl-1", "object": "chat.completion",
                                             "created": int(time.time()), "model": body["model"], "usage": usage,
                                             "choices": [{"index": 0, "message": reply, "finish_reason": finish}]})
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def event(data: Any) -> None:
            payload = f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
            handler.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")

        chunk = lambda delta, reason=None: {"id": "chatcmpl-1", "object": "chat.completion.chunk",  # noqa: E731
                                            "model": body["model"],
                                            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        for piece in [content[i:i + 8] for i in range(0, len(content), 8)]:
            event(chunk({"content": piece}))
        for i, call in enumerate(calls):
            event(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                         "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            event(chunk({"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]}))
        event(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": body["model"], "choices": [],
                   "usage": usage})
        event("[DONE]")
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
