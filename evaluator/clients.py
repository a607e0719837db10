"""Async chat clients on httpx for Ollama (/api/chat) and OpenAI-compatible servers (/v1/chat/completions).

Both expose the same two coroutines, `list_models()` and `chat(...)`, and raise
BackendError with a message a user can act on. Connect errors, 429 and 5xx are
retried a bounded number of times with exponential backoff; 4xx, malformed
bodies and streams that end early are not (retrying would give the same answer).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

import httpx

from synaptic_tui.redact import redact_text

OLLAMA_URL = "http://127.0.0.1:11434"
OPENAI_URL = "http://127.0.0.1:1234/v1"
BACKENDS = ("ollama", "openai")
T = TypeVar("T")


class BackendError(Exception):
    """A request that failed; `kind` is connect | timeout | http | malformed | truncated | server."""

    def __init__(self, kind: str, message: str, *, status: int | None = None, retryable: bool = False):
        # Messages quote the URL they failed on, and land in results.jsonl and reports: never its credentials.
        super().__init__(redact_text(message))
        self.kind = kind
        self.status = status
        self.retryable = retryable


@dataclass
class ChatResult:
    content: str
    tool_calls: list[Any]
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    latency_s: float = 0.0
    first_token_s: float | None = None  # streaming only
    attempts: int = 1
    raw: dict[str, Any] = field(default_factory=dict)  # the final body or stream chunk, for the log
    # "server" when the server reported the counts; "stream" when it did not (llama-cpp-python's server
    # ignores stream_options) and completion tokens were counted as the chunks that carried output.
    token_source: str = "server"


@dataclass
class Reachability:
    reachable: bool
    models: list[str] | None  # None: reachable, but the model list could not be read
    error: str | None = None


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_url(backend: str) -> str:
    return OLLAMA_URL if backend == "ollama" else OPENAI_URL


def start_hint(backend: str) -> str:
    if backend == "ollama":
        return "start it with `ollama serve` (and `ollama pull MODEL`)"
    return ("start an OpenAI-compatible server: LM Studio's local server (Developer tab, port 1234), "
            "`mlx_lm.server --model PATH --port 1234`, llama.cpp's `llama-server -m MODEL.gguf --port 1234`, "
            "or vLLM, and pass its URL ending in /v1")


def _error_text(response: httpx.Response) -> str:
    """The server's own error message: Ollama {"error": "..."}, OpenAI {"error": {"message": "..."}}."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str):
            return error
    return json.dumps(body)[:200]


class _HTTPBackend:
    """What both clients share: one httpx.AsyncClient, retries, timeouts."""

    kind = ""

    def __init__(self, url: str, *, timeout: float = 120.0, connect_timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.5, transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 64, api_key: str | None = None):
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        # With HTTP_PROXY set, httpx would route even 127.0.0.1 through the proxy.
        self.http = httpx.AsyncClient(
            base_url=self.url, transport=transport, trust_env=not is_loopback(self.url),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        tries = 0
        while True:
            tries += 1
            try:
                return await attempt(), tries
            except BackendError as exc:
                if not exc.retryable or tries > self.retries:
                    if tries > 1:
                        exc.args = (f"{exc.args[0]} (after {tries} attempts)",)
                    raise
            await asyncio.sleep(self.backoff * 2 ** (tries - 1))

    def _translate(self, exc: httpx.HTTPError, path: str) -> BackendError:
        where = f"{self.url}{path}"
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return BackendError("connect", f"cannot connect to {where}: {exc or type(exc).__name__}", retryable=True)
        if isinstance(exc, httpx.TimeoutException):
            return BackendError("timeout", f"no answer from {where} in time ({type(exc).__name__})")
        if isinstance(exc, httpx.RemoteProtocolError):
            return BackendError("truncated", f"{where} closed the connection mid-response: {exc}")
        if isinstance(exc, httpx.NetworkError):
            # A pooled keep-alive connection to a server that went away fails on read or write,
            # not on connect; a fresh attempt then tells whether anything is listening.
            return BackendError("connect", f"lost the connection to {where}: {type(exc).__name__}", retryable=True)
        return BackendError("connect", f"{where}: {type(exc).__name__}: {exc}")

    def _check_status(self, response: httpx.Response, path: str) -> None:
        if response.is_success:
            return
        status = response.status_code
        text = _error_text(response)
        retryable = status >= 500 or status == 429
        raise BackendError("http", f"HTTP {status} from {self.url}{path}: {text}", status=status, retryable=retryable)

    async def _get_json(self, path: str) -> Any:
        async def attempt():
            try:
                response = await self.http.get(path)
            except httpx.HTTPError as exc:
                raise self._translate(exc, path) from None
            self._check_status(response, path)
            try:
                return response.json()
            except ValueError:
                raise BackendError("malformed", f"{self.url}{path} answered with something that is not JSON: "
                                                f"{response.text[:80]!r}") from None
        return (await self._with_retries(attempt))[0]

    async def _post(self, path: str, body: dict[str, Any], stream: bool,
                    read_stream: Callable[[httpx.Response], Awaitable[ChatResult]],
                    read_body: Callable[[Any], ChatResult]) -> ChatResult:
        async def attempt() -> ChatResult:
            started = time.perf_counter()
            try:
                if stream:
                    async with self.http.stream("POST", path, json=body) as response:
                        if not response.is_success:
                            await response.aread()
                            self._check_status(response, path)
                        result = await read_stream(response)
                else:
                    response = await self.http.post(path, json=body)
                    self._check_status(response, path)
                    try:
                        data = response.json()
                    except ValueError:
                        raise BackendError("malformed", f"{self.url}{path} answered with something that is not "
                                                        f"JSON: {response.text[:80]!r}") from None
                    result = read_body(data)
            except httpx.HTTPError as exc:
                raise self._translate(exc, path) from None
            except (AttributeError, TypeError, KeyError) as exc:
                # JSON of the wrong shape (a list where an object belongs, ...): not worth retrying.
                raise BackendError("malformed", f"{self.url}{path}: unexpected response shape "
                                                f"({type(exc).__name__}: {exc})") from None
            result.latency_s = time.perf_counter() - started
            if result.first_token_s is not None:
                result.first_token_s -= started
            return result

        result, tries = await self._with_retries(attempt)
        result.attempts = tries
        return result

    async def check(self) -> Reachability:
        """Whether the server answers, and the models it lists (no retries: this is a quick probe).

        Uses the subclass's list_models().
        """
        retries, self.retries = self.retries, 0
        try:
            return Reachability(True, await self.list_models())
        except BackendError as exc:
            if exc.kind == "malformed":
                # mlx_lm.server answers /v1/models with an empty body when the HF cache dir does not exist.
                return Reachability(True, None, str(exc))
            return Reachability(False, None, str(exc))
        finally:
            self.retries = retries


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        if line.strip():
            yield line


def _malformed(url: str, what: str, sample: Any) -> BackendError:
    return BackendError("malformed", f"{url}: {what}: {str(sample)[:80]!r}")


class OllamaClient(_HTTPBackend):
    """Ollama's native API (docs/api.md): GET /api/tags, POST /api/chat with tools, NDJSON streaming."""

    kind = "ollama"

    async def list_models(self) -> list[str]:
        data = await self._get_json("/api/tags")
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            raise _malformed(self.url + "/api/tags", "no 'models' list", data)
        return [str(m.get("name") or m.get("model")) for m in data["models"] if isinstance(m, dict)]

    async def chat(self, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *,
                   temperature: float | None = None, top_p: float | None = None, max_tokens: int | None = None,
                   stream: bool = True) -> ChatResult:
        options = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("num_predict", max_tokens))
                   if v is not None}
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        if tools:
            body["tools"] = tools
        if options:
            body["options"] = options
        where = self.url + "/api/chat"

        def from_final(data: Any, content: str, calls: list[Any], first: float | None) -> ChatResult:
            return ChatResult(content, calls, data.get("prompt_eval_count"), data.get("eval_count"),
                              data.get("done_reason"), first_token_s=first, raw=data)

        def read_body(data: Any) -> ChatResult:
            if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
                raise _malformed(where, "response without a 'message' object", data)
            if "error" in data:
                raise BackendError("server", f"{where}: {data['error']}")
            message = data["message"]
            return from_final(data, message.get("content") or "", list(message.get("tool_calls") or []), None)

        async def read_stream(response: httpx.Response) -> ChatResult:
            parts: list[str] = []
            calls: list[Any] = []
            first = None
            done: ChatResult | None = None
            async for line in _lines(response):
                if done is not None:
                    continue  # read to the body's end (normally nothing is left), so the connection is reused
                try:
                    chunk = json.loads(line)
                except json.JSONDecodeError:
                    raise _malformed(where, "stream line is not JSON", line) from None
                if not isinstance(chunk, dict):
                    raise _malformed(where, "stream line is not an object", line)
                if "error" in chunk:  # Ollama reports mid-stream failures as {"error": "..."}
                    raise BackendError("server", f"{where}: {chunk['error']}")
                message = chunk.get("message") if isinstance(chunk.get("message"), dict) else {}
                if message.get("content"):
                    first = first or time.perf_counter()
                    parts.append(message["content"])
                if message.get("tool_calls"):
                    first = first or time.perf_counter()
                    calls.extend(message["tool_calls"])
                if chunk.get("done"):
                    done = from_final(chunk, "".join(parts), calls, first)
            if done is not None:
                return done
            raise BackendError("truncated", f"{where}: stream ended before its final 'done' message "
                                            f"({len(parts)} chunks received)")

        return await self._post("/api/chat", body, stream, read_stream, read_body)


class OpenAIClient(_HTTPBackend):
    """OpenAI-compatible servers (LM Studio, llama.cpp server, vLLM, mlx_lm.server, transformers serve):
    /models, /chat/completions."""

    kind = "openai"

    async def list_models(self) -> list[str]:
        data = await self._get_json("/models")
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise _malformed(self.url + "/models", "no 'data' list", data)
        return [str(m.get("id")) for m in data["data"] if isinstance(m, dict)]

    async def chat(self, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *,
                   temperature: float | None = None, top_p: float | None = None, max_tokens: int | None = None,
                   stream: bool = True, on_text: Callable[[str], None] | None = None) -> ChatResult:
        """One chat completion; `on_text` gets each streamed piece of text as it arrives (the Chat screen)."""
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        for key, value in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens)):
            if value is not None:
                body[key] = value
        if tools:
            body["tools"] = tools
        if stream:
            body["stream_options"] = {"include_usage": True}
        where = self.url + "/chat/completions"

        def usage(data: dict[str, Any]) -> tuple[int | None, int | None]:
            u = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            return u.get("prompt_tokens"), u.get("completion_tokens")

        def read_body(data: Any) -> ChatResult:
            choices = data.get("choices") if isinstance(data, dict) else None
            if not isinstance(choices, list) or not choices or not isinstance(choices[0].get("message"), dict):
                raise _malformed(where, "response without choices[0].message", data)
            message = choices[0]["message"]
            return ChatResult(message.get("content") or "", list(message.get("tool_calls") or []), *usage(data),
                              choices[0].get("finish_reason"), raw=data)

        async def read_stream(response: httpx.Response) -> ChatResult:
            parts: list[str] = []
            calls: dict[int, dict[str, Any]] = {}  # tool-call deltas arrive in pieces, keyed by index
            first = finish = None
            tokens: tuple[int | None, int | None] = (None, None)
            last: dict[str, Any] = {}
            output_chunks = 0  # servers stream one token per chunk: the count when no usage comes

            def result() -> ChatResult:
                source, counted = "server", tokens
                if counted[1] is None and output_chunks:
                    counted, source = (counted[0], output_chunks), "stream"
                return ChatResult("".join(parts), [calls[i] for i in sorted(calls)], *counted, finish,
                                  first_token_s=first, raw=last, token_source=source)

            done: ChatResult | None = None
            async for line in _lines(response):
                if done is not None:
                    continue  # read to the body's end (normally nothing is left), so the connection is reused
                if line.startswith(":"):  # SSE comment (mlx_lm.server sends keep-alives)
                    continue
                if not line.startswith("data:"):
                    continue  # event:/id: fields carry nothing we use
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = result()
                    continue
                try:
                    chunk = json.loads(payload)
                except json.JSONDecodeError:
                    raise _malformed(where, "stream event is not JSON", payload) from None
                if not isinstance(chunk, dict):
                    raise _malformed(where, "stream event is not an object", payload)
                if "error" in chunk:
                    error = chunk["error"]
                    raise BackendError("server", f"{where}: {error.get('message') if isinstance(error, dict) else error}")
                last = chunk
                if chunk.get("usage"):
                    tokens = usage(chunk)
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    output_chunks += bool(delta.get("content") or delta.get("tool_calls"))
                    if delta.get("content"):
                        first = first or time.perf_counter()
                        parts.append(delta["content"])
                        if on_text is not None:
                            on_text(delta["content"])
                    for i, piece in enumerate(delta.get("tool_calls") or []):
                        first = first or time.perf_counter()
                        slot = calls.setdefault(piece.get("index", i), {"function": {"name": "", "arguments": ""}})
                        function = piece.get("function") or {}
                        slot["function"]["name"] += function.get("name") or ""
                        arguments = function.get("arguments")
                        if isinstance(arguments, dict):  # some servers send the whole object at once
                            slot["function"]["arguments"] = arguments
                        elif arguments:
                            slot["function"]["arguments"] += arguments
                    finish = choice.get("finish_reason") or finish
            if done is not None:
                return done
            if finish is not None:
                # `transformers serve` ends its streams with the chunk carrying finish_reason (and usage),
                # without `data: [DONE]`: an answer the server called finished is complete. (A connection
                # cut mid-body raises RemoteProtocolError before this point.)
                return result()
            raise BackendError("truncated", f"{where}: stream ended without [DONE] or a finish_reason "
                                            f"({len(parts)} chunks received)")

        return await self._post("/chat/completions", body, stream, read_stream, read_body)


def make_client(backend: str, url: str | None = None, **kwargs: Any) -> OllamaClient | OpenAIClient:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (choose {', '.join(BACKENDS)})")
    cls = OllamaClient if backend == "ollama" else OpenAIClient
    return cls(url or default_url(backend), **kwargs)


async def check_backend(backend: str, url: str | None = None, timeout: float = 2.0) -> Reachability:
    """Reachability and model list for a picker: one quick GET, no retries."""
    async with make_client(backend, url, timeout=timeout, connect_timeout=timeout) as client:
        return await client.check()
