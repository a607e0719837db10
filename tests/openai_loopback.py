"""A loopback OpenAI-compatible server, for tests: HTTP/1.1 with kept-alive connections, SSE in chunked bodies.

It answers the two endpoints the evaluator uses as the OpenAI API reference
documents them (and LM Studio, llama.cpp's server, vLLM and mlx_lm.server
follow): `GET /v1/models` -> {"object": "list", "data": [{"id", "object":
"model", ...}]}; `POST /v1/chat/completions` -> a `chat.completion` object, or
with "stream": true a `text/event-stream` of `chat.completion.chunk` events
(`data: {...}` lines, the assistant's text in `choices[0].delta.content`, a tool
call's name then its arguments in fragments keyed by `index`, a last chunk
with `finish_reason`, a usage chunk with empty choices when
`stream_options.include_usage` asks for it) ending with `data: [DONE]`.
Errors are {"error": {"message", "type", "code"}} with the status.

Like real servers it keeps connections open between requests (HTTP/1.1) and
sends streams with `Transfer-Encoding: chunked`, one chunk per event, so a
client is tested on connection reuse and on streams cut at any point.
`faults` is a queue of misbehaviours, one per chat request (see FAULTS);
`connection_ids` says which connection carried each chat request.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = {
    "<status>": "that HTTP status (e.g. '503', '429', '400') with an OpenAI error body",
    "slow": "no answer for `hang` seconds, then the answer",
    "stall": "the headers and first event, then nothing for `hang` seconds, then the rest",
    "die": "the headers and first event, then the connection is closed mid-body (no last chunk)",
    "drop": "the connection is closed without any answer",
    "no_done": "a stream that ends cleanly with neither finish_reason nor [DONE]",
    "finish_no_done": "a stream whose last event carries finish_reason, without [DONE] (as `transformers serve`)",
    "malformed": "a stream event that is not JSON",
    "error_event": "a stream that starts, then sends {\"error\": {...}}",
    "shutdown": "the server goes away: this request gets no answer, later ones find nothing listening",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # eight clients connecting at once overflow the stdlib's 5

    def handle_error(self, request, client_address) -> None:
        # A client that timed out and hung up mid-answer is part of the tests, not an error to print.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class OpenAIServer:
    def __init__(self, models: tuple[str, ...] = ("demo-model",), *, reply: dict[str, Any] | None = None,
                 usage: dict[str, int] | None = None, events: list[dict[str, Any]] | None = None,
                 chunk_delay: float = 0.0, hang: float = 5.0, models_body: bytes | None = None):
        self.models = list(models)
        self.reply = reply or {"content": "Hello there!"}
        self.usage = usage if usage is not None else {"prompt_tokens": 12, "completion_tokens": 5,
                                                      "total_tokens": 17}
        self.events = events  # the whole stream, exactly, instead of one derived from `reply`
        self.chunk_delay = chunk_delay
        self.hang = hang
        self.models_body = models_body
        self.faults: list[str | None] = []
        self.requests: list[dict[str, Any]] = []  # chat request bodies, in arrival order
        self.connection_ids: list[int] = []  # the connection each chat request came on
        self.connections = 0  # connections accepted so far
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # kept alive between requests, as real servers do

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections += 1
                    self.connection_id = server.connections
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
                if self.path.rstrip("/") == "/v1/models":
                    if server.models_body is not None:
                        return server._send(self, 200, raw=server.models_body)
                    server._send(self, 200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 1763632800, "owned_by": "loopback"}
                        for m in server.models]})
                else:
                    server._send(self, 404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/chat/completions":
                    return server._send(self, 404, {"error": {"message": f"no route {self.path}",
                                                              "type": "not_found"}})
                server._chat(self, body)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every kept-alive connection, as a server process that exits does."""
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

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- responses ---------------------------------------------------------------

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: Any = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _chat(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            return self._send(handler, 400, {"error": {"message": f"invalid JSON: {exc.msg}",
                                                       "type": "invalid_request_error"}})
        if body.get("model") not in self.models:
            return self._send(handler, 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                       "type": "invalid_request_error", "code": "model_not_found"}})
        with self._lock:
            self.requests.append(body)
            self.connection_ids.append(handler.connection_id)
            fault = self.faults.pop(0) if self.faults else None
        if fault and fault.isdigit():
            kind = "rate_limit_exceeded" if fault == "429" else "server_error" if fault >= "500" else "invalid_request"
            return self._send(handler, int(fault), {"error": {"message": f"injected {fault}", "type": kind,
                                                              "code": int(fault)}})
        if fault in ("drop", "shutdown"):
            if fault == "shutdown":
                threading.Thread(target=self.stop, daemon=True).start()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "slow":
            time.sleep(self.hang)
        if not body.get("stream"):
            return self._send(handler, 200, self._completion(body))
        self._stream(handler, body, fault)

    def _message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.reply.get("content")}
        if self.reply.get("tool_calls"):
            message["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                                      "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                                     for i, c in enumerate(self.reply["tool_calls"])]
        return message

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        message = self._message()
        answer = {"id": "chatcmpl-loopback", "object": "chat.completion", "created": int(time.time()),
                  "model": body["model"], "choices": [{"index": 0, "message": message, "logprobs": None,
                                                       "finish_reason": self._finish_reason()}]}
        if self.usage:
            answer["usage"] = self.usage
        return answer

    def _finish_reason(self) -> str:
        return self.reply.get("finish_reason") or ("tool_calls" if self.reply.get("tool_calls") else "stop")

    def _chunk(self, body: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-loopback", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body["model"], "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                     "finish_reason": finish}]}

    def stream_events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of a streamed answer to `body`, before [DONE]."""
        if self.events is not None:
            return list(self.events)
        content = self.reply.get("content") or ""
        events = [self._chunk(body, {"role": "assistant", "content": ""})]
        events += [self._chunk(body, {"content": content[i:i + 4]}) for i in range(0, len(content), 4)]
        for i, call in enumerate(self.reply.get("tool_calls") or []):
            arguments = json.dumps(call["arguments"])
            half = len(arguments) // 2
            events.append(self._chunk(body, {"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                                             "function": {"name": call["name"], "arguments": ""}}]}))
            for piece in (arguments[:half], arguments[half:]):
                events.append(self._chunk(body, {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        events.append(self._chunk(body, {}, self._finish_reason()))
        if self.usage and (body.get("stream_options") or {}).get("include_usage"):
            events.append({**self._chunk(body, {}), "choices": [], "usage": self.usage})
        return events

    def _stream(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], fault: str | None) -> None:
        events: list[Any] = self.stream_events(body)
        done = True
        if fault == "no_done":
            events = [e for e in events if not any(c.get("finish_reason") for c in e.get("choices") or [])
                      and not e.get("usage")]
            done = False
        elif fault == "finish_no_done":
            done = False
        elif fault == "malformed":
            events = events[:1] + ["{not json"]
        elif fault == "error_event":
            events = events[:1] + [{"error": {"message": "model crashed", "type": "server_error"}}]
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def chunk(text: str) -> None:
            data = text.encode()
            handler.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
            handler.wfile.flush()

        chunk(": keep-alive\n\n")  # an SSE comment first, as mlx_lm.server sends while it reads the prompt
        for n, event in enumerate(events):
            if n and self.chunk_delay:
                time.sleep(self.chunk_delay)
            chunk(f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n")
            if n == 0 and fault == "stall":
                time.sleep(self.hang)
            if n == 0 and fault == "die":
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)  # mid-body: no last chunk ever comes
                return
        if done:
            chunk("data: [DONE]\n\n")
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
