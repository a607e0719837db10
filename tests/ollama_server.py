"""A loopback server speaking Ollama's documented API, for tests and benchmarks (the real Ollama cannot run here).

It follows ollama/ollama docs/api.md ("Generate a chat completion", "List Local
Models") and docs/api/errors.mdx: `GET /api/tags` -> {"models": [{name, model,
modified_at, size, digest, details}]}; `POST /api/chat` streams NDJSON chunks
{"model", "created_at", "message": {"role", "content", "tool_calls"?}, "done": false}
ending with a `done: true` chunk carrying done_reason and the duration/count
metrics (nanoseconds), or with "stream": false one such object; tool calls are
`message.tool_calls[].function.{index, name, arguments (an object)}`; errors are
{"error": "..."} with 400/404/500, and a failure after streaming began is a
final {"error": "..."} line.

Answers come from a real model when `upstream` names an OpenAI-compatible server
(mlx_lm.server with the demo model): the request is translated and forwarded,
streamed chunk by chunk. Without one, `reply` (or what `answer(body)` returns
for each request) is answered after `latency` seconds. `faults` is a queue of
misbehaviours consumed one per chat request.

Like Ollama (a Go net/http server) it speaks HTTP/1.1: connections stay open
between requests, whole answers carry a Content-Length, streams are sent with
`Transfer-Encoding: chunked`, one chunk per NDJSON line. `stop()` closes the
kept-alive connections too, as a server process that exits does.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import httpx

# "truncate": a stream that ends (cleanly) before its done message; "die": the connection is closed mid-stream;
# "trickle": a token now and then, never done.
FAULTS = ("500", "timeout", "malformed", "truncate", "die", "stream_error", "shutdown", "trickle")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class _Server(ThreadingHTTPServer):
    # The stdlib's listen backlog of 5 overflows when eight clients connect at once, and the
    # kernel retries the extra connects a second later: that would be measured as latency.
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        # A client that timed out and hung up mid-answer is part of the tests, not an error to print.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class OllamaServer:
    def __init__(self, models: dict[str, str] | None = None, *, upstream: str | None = None,
                 reply: dict[str, Any] | None = None, answer: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 latency: float = 0.0, hang: float = 5.0, trickle: float = 0.2):
        # Ollama model name -> the upstream server's model id.
        self.models = models or {"demo-model:latest": "default_model"}
        self.upstream = upstream.rstrip("/") if upstream else None
        self.reply = reply or {"content": "ok"}
        self.answer = answer  # request body -> reply, per request (instead of the one `reply`)
        self.latency = latency
        self.hang = hang
        self.trickle = trickle
        self.faults: list[str | None] = []
        self.requests: list[dict[str, Any]] = []  # chat request bodies, in arrival order
        self.in_flight = self.max_in_flight = 0  # chat requests being answered now / at most at once
        self.connections = 0  # connections accepted so far
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # kept alive between requests, as Ollama's server does

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections += 1
                    server._open.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._open.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/api/tags":
                    server._tags(self)
                elif self.path == "/api/version":
                    server._json(self, 200, {"version": "0.0.0-loopback"})
                elif self.path == "/":
                    server._json(self, 200, None, raw=b"Ollama is running")
                else:
                    server._json(self, 404, {"error": "not found"})

            def do_POST(self) -> None:
                if self.path == "/api/chat":
                    with server._lock:
                        server.in_flight += 1
                        server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    try:
                        server._chat(self)
                    finally:
                        with server._lock:
                            server.in_flight -= 1
                else:
                    server._json(self, 404, {"error": "not found"})

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> OllamaServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every kept-alive connection."""
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._lock:
            connections, self._open = list(self._open), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()

    def __enter__(self) -> OllamaServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- responses ---------------------------------------------------------------

    @staticmethod
    def _json(handler: BaseHTTPRequestHandler, status: int, body: Any, raw: bytes | None = None,
              kind: str | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", kind or ("application/json; charset=utf-8" if raw is None else "text/plain"))
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _start_stream(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-ndjson")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

    @staticmethod
    def _write_chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
        handler.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        handler.wfile.flush()

    def _write_line(self, handler: BaseHTTPRequestHandler, line: dict[str, Any]) -> None:
        self._write_chunk(handler, json.dumps(line).encode() + b"\n")

    @staticmethod
    def _end_stream(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    def _tags(self, handler: BaseHTTPRequestHandler) -> None:
        models = [{"name": name, "model": name, "modified_at": "2026-11-20T09:00:00.000000000Z", "size": 1282048,
                   "digest": f"{abs(hash(name)):064x}"[:64],
                   "details": {"parent_model": "", "format": "safetensors", "family": "llama", "families": ["llama"],
                               "parameter_size": "320K", "quantization_level": "F32"}}
                  for name in self.models]
        self._json(handler, 200, {"models": models})

    def _chat(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        try:
            body = json.loads(handler.rfile.read(length) or b"{}")
        except json.JSONDecodeError as exc:
            return self._json(handler, 400, {"error": f"invalid character in request body: {exc.msg}"})
        model = body.get("model")
        if not model:
            return self._json(handler, 400, {"error": "model is required"})
        name = model if model in self.models else f"{model}:latest"
        if name not in self.models:
            return self._json(handler, 404, {"error": f"model {json.dumps(model)} not found, try pulling it first"})
        with self._lock:
            self.requests.append(body)
            fault = self.faults.pop(0) if self.faults else None
        stream = body.get("stream", True)  # Ollama streams unless told not to
        if fault == "500":
            return self._json(handler, 500, {"error": "the model failed to generate a response"})
        if fault == "timeout":
            time.sleep(self.hang)
            return self._json(handler, 500, {"error": "too late"})
        if fault == "trickle":
            # One token every `trickle` seconds, never done: each read comes in time, the answer never does.
            self._start_stream(handler)
            for _ in range(int(60 / self.trickle)):
                try:
                    self._write_line(handler, self._chunk(model, {"role": "assistant", "content": "a"}))
                except OSError:
                    return  # the client gave up
                time.sleep(self.trickle)
            handler.close_connection = True
            return
        if fault == "shutdown":
            # The server goes away: this request gets no answer, later ones find nothing listening.
            threading.Thread(target=self.stop, daemon=True).start()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "malformed":
            if not stream:
                return self._json(handler, 200, None, raw=b'{"model": "x", "message": ', kind="application/json")
            self._start_stream(handler)
            self._write_chunk(handler, b'{"model": "x", "message": {"role": "assistant", "content": "hal\n')
            self._end_stream(handler)
            return
        if self.upstream:
            chunks, final = self._forward(body, self.models[name], stream, handler, fault)
        else:
            time.sleep(self.latency)
            chunks, final = self._scripted(body), None
        if chunks is None:  # already streamed
            return
        self._answer(handler, model, chunks, final, stream, fault)  # echoed as asked, like Ollama

    def _scripted(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        reply = self.answer(body) if self.answer else self.reply
        message = {"role": "assistant", "content": reply.get("content", "")}
        if reply.get("tool_calls"):
            message["tool_calls"] = [{"function": {"index": i, "name": c["name"], "arguments": c["arguments"]}}
                                     for i, c in enumerate(reply["tool_calls"])]
        return [{"message": message, "eval_count": 3, "prompt_eval_count": 11, "done_reason": "stop"}]

    def _chunk(self, model: str, message: dict[str, Any], done: bool = False, **extra: Any) -> dict[str, Any]:
        return {"model": model, "created_at": _now(), "message": message, "done": done, **extra}

    def _final(self, model: str, started: float, prompt: int, completion: int, reason: str,
               message: dict[str, Any] | None = None) -> dict[str, Any]:
        total = int((time.perf_counter() - started) * 1e9)
        return self._chunk(model, message or {"role": "assistant", "content": ""}, True, done_reason=reason,
                           total_duration=total, load_duration=0, prompt_eval_count=prompt,
                           prompt_eval_duration=total // 4, eval_count=completion, eval_duration=total - total // 4)

    def _answer(self, handler: BaseHTTPRequestHandler, model: str, chunks: list[dict[str, Any]], final: Any,
                stream: bool, fault: str | None) -> None:
        started = time.perf_counter()
        spec = chunks[0]
        message = spec["message"]
        if not stream:
            return self._json(handler, 200, self._final(model, started, spec["prompt_eval_count"],
                                                        spec["eval_count"], spec["done_reason"], message))
        self._start_stream(handler)
        lines = []
        content = message.get("content", "")
        for piece in [content[i:i + 4] for i in range(0, len(content), 4)]:
            lines.append(self._chunk(model, {"role": "assistant", "content": piece}))
        if message.get("tool_calls"):
            lines.append(self._chunk(model, {"role": "assistant", "content": "", "tool_calls": message["tool_calls"]}))
        if fault == "truncate":
            lines = lines[:2]
        elif fault == "stream_error":
            lines = lines[:1] + [{"error": "an error was encountered while running the model"}]
        else:
            lines.append(self._final(model, started, spec["prompt_eval_count"], spec["eval_count"],
                                     spec["done_reason"]))
        for n, line in enumerate(lines):
            self._write_line(handler, line)
            if fault == "die" and n == 0:
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)  # mid-body: the last chunk never comes
                return
        self._end_stream(handler)

    def _forward(self, body: dict[str, Any], upstream_model: str, stream: bool,
                 handler: BaseHTTPRequestHandler, fault: str | None) -> tuple[Any, Any]:
        """Ask the upstream OpenAI-compatible server; stream its deltas out as Ollama NDJSON as they arrive."""
        options = body.get("options") or {}
        request: dict[str, Any] = {"model": upstream_model, "messages": body.get("messages") or [], "stream": stream}
        for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("num_predict", "max_tokens")):
            if ours in options:
                request[theirs] = options[ours]
        if body.get("tools"):
            request["tools"] = body["tools"]
        if stream:
            request["stream_options"] = {"include_usage": True}
        with httpx.Client(trust_env=False, timeout=120) as client:
            if not stream:
                response = client.post(f"{self.upstream}/chat/completions", json=request)
                if response.status_code >= 400:
                    self._upstream_error(handler, response)
                    return None, None
                data = response.json()
                message = data["choices"][0]["message"]
                usage = data.get("usage") or {}
                reason = "length" if data["choices"][0].get("finish_reason") == "length" else "stop"
                return [{"message": self._ollama_message(message), "prompt_eval_count": usage.get("prompt_tokens", 0),
                         "eval_count": usage.get("completion_tokens", 0), "done_reason": reason}], None
            started = time.perf_counter()
            model = body["model"]
            usage: dict[str, Any] = {}
            reason = "stop"
            sent = 0
            # OpenAI streams a tool call in pieces (name first, arguments in fragments, keyed by index);
            # Ollama sends each call whole, so pieces are gathered and the calls sent once complete.
            calls: dict[int, dict[str, Any]] = {}
            with client.stream("POST", f"{self.upstream}/chat/completions", json=request) as response:
                if response.status_code >= 400:
                    response.read()
                    self._upstream_error(handler, response)
                    return None, None
                self._start_stream(handler)
                for line in response.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    event = json.loads(line[5:])
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if choice.get("finish_reason") == "length":
                            reason = "length"
                        for piece in delta.get("tool_calls") or []:
                            call = calls.setdefault(piece.get("index", len(calls)), {"name": "", "arguments": ""})
                            function = piece.get("function") or {}
                            call["name"] += function.get("name") or ""
                            arguments = function.get("arguments")
                            call["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments or {})
                        if delta.get("content"):
                            message = {"role": "assistant", "content": delta["content"]}
                            self._write_line(handler, self._chunk(model, message))
                            sent += 1
                            if fault == "truncate" and sent >= 2:
                                self._end_stream(handler)
                                return None, None
            if calls:
                whole = {"tool_calls": [{"function": calls[i]} for i in sorted(calls)]}
                self._write_line(handler, self._chunk(model, self._ollama_message(whole)))
            self._write_line(handler, self._final(model, started, usage.get("prompt_tokens", 0),
                                                  usage.get("completion_tokens", 0), reason))
            self._end_stream(handler)
            return None, None

    def _upstream_error(self, handler: BaseHTTPRequestHandler, response: httpx.Response) -> None:
        """Ollama reports a failed generation as {"error": "..."} with the status, before any chunk."""
        try:
            detail = response.json().get("error")
            detail = detail.get("message") if isinstance(detail, dict) else detail
        except (ValueError, AttributeError):
            detail = None
        self._json(handler, response.status_code if response.status_code < 500 else 500,
                   {"error": detail or response.text[:200] or f"upstream status {response.status_code}"})

    @staticmethod
    def _ollama_message(openai_message: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's message/delta -> Ollama's: tool-call arguments become an object, with an index."""
        message = {"role": "assistant", "content": openai_message.get("content") or ""}
        calls = []
        for i, call in enumerate(openai_message.get("tool_calls") or []):
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    arguments = {}
            calls.append({"function": {"index": i, "name": function.get("name", ""), "arguments": arguments or {}}})
        if calls:
            message["tool_calls"] = calls
        return message
