"""The OpenAI-compatible client against a real loopback server (tests/openai_loopback.py): HTTP/1.1 with
kept-alive connections, SSE streams in chunked bodies, and servers that are slow, fail, or die mid-answer."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from conftest import EXAMPLES
from openai_loopback import OpenAIServer

from evaluator import clients
from evaluator.clients import BackendError, OllamaClient, OpenAIClient
from evaluator.prompts import load_prompt_set
from evaluator.runner import EvalCannotRun, create_eval, new_settings, preflight, read_results, run_eval

PROMPTS = EXAMPLES / "prompts" / "tool_calling.json"
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
HI = [{"role": "user", "content": "hi"}]
WEATHER = {"content": "Let me look.", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


async def test_a_stream_assembles_text_tool_call_fragments_and_usage():
    with OpenAIServer(reply=WEATHER) as server:
        async with OpenAIClient(server.url) as client:
            result = await client.chat("demo-model", HI, [TOOL], temperature=0.0, max_tokens=24)
    body = server.requests[0]
    assert (body["stream"], body["max_tokens"], body["temperature"], body["tools"]) == (True, 24, 0.0, [TOOL])
    assert body["stream_options"] == {"include_usage": True}
    assert result.content == "Let me look."
    # The name came in one event, the arguments in two fragments: put back together whole.
    assert result.tool_calls == [{"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    assert (result.prompt_tokens, result.completion_tokens, result.finish_reason) == (12, 5, "tool_calls")
    assert result.token_source == "server" and result.attempts == 1
    assert result.raw["usage"] == server.usage
    assert 0 < result.first_token_s <= result.latency_s


async def test_a_server_that_sends_no_usage_gets_its_output_chunks_counted():
    # llama-cpp-python's server ignores stream_options: one token per output chunk, and the record says so.
    with OpenAIServer(reply={"content": "abcdefghij"}, usage={}) as server:  # 3 content chunks of <= 4 chars
        async with OpenAIClient(server.url) as client:
            result = await client.chat("demo-model", HI)
    assert (result.content, result.prompt_tokens, result.completion_tokens) == ("abcdefghij", None, 3)
    assert result.token_source == "stream"


async def test_requests_reuse_one_kept_alive_connection():
    with OpenAIServer(reply={"content": "ok"}) as server:
        async with OpenAIClient(server.url) as client:
            for stream in (True, False, True, True, False):
                assert (await client.chat("demo-model", HI, stream=stream)).content == "ok"
            assert await client.list_models() == ["demo-model"]
    # Streams read to their end leave the connection reusable: five chats and a listing, one connection.
    assert server.connection_ids == [1] * 5 and server.connections == 1


async def test_concurrent_streams_use_a_connection_each_and_keep_them():
    with OpenAIServer(reply={"content": "some words to stream"}, chunk_delay=0.05) as server:
        async with OpenAIClient(server.url, max_connections=4) as client:
            first = await asyncio.gather(*(client.chat("demo-model", HI) for _ in range(4)))
            second = await asyncio.gather(*(client.chat("demo-model", HI) for _ in range(4)))
    assert {r.content for r in first + second} == {"some words to stream"}
    assert server.connections == 4
    assert sorted(server.connection_ids[4:]) == sorted(server.connection_ids[:4]) == [1, 2, 3, 4]


@pytest.mark.parametrize("fault, kind, text", [
    ("no_done", "truncated", "stream ended without [DONE] or a finish_reason (3 chunks received)"),
    ("die", "truncated", "closed the connection mid-response"),
    ("malformed", "malformed", "stream event is not JSON: '{not json'"),
    ("error_event", "server", "model crashed"),
])
async def test_stream_faults_are_errors_of_their_kind_and_not_retried(fault, kind, text):
    with OpenAIServer(reply={"content": "Hello there!"}) as server:
        server.faults = [fault]
        async with OpenAIClient(server.url, backoff=0) as client:
            with pytest.raises(BackendError) as err:
                await client.chat("demo-model", HI)
            # The client is still good for the next request, on a fresh connection if the old one died.
            assert (await client.chat("demo-model", HI)).content == "Hello there!"
    assert err.value.kind == kind and text in str(err.value), str(err.value)
    assert len(server.requests) == 2  # no retry: the same request would get the same answer


async def test_a_stream_that_ends_after_its_finish_reason_without_done_is_complete():
    # `transformers serve` ends its streams with the finish_reason chunk and never sends [DONE].
    with OpenAIServer(reply=WEATHER) as server:
        server.faults = ["finish_no_done"]
        async with OpenAIClient(server.url) as client:
            result = await client.chat("demo-model", HI, [TOOL])
    assert result.content == "Let me look." and result.finish_reason == "tool_calls"
    assert result.tool_calls == [{"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    assert (result.prompt_tokens, result.completion_tokens) == (12, 5)


async def test_4xx_is_not_retried_and_shows_the_servers_message():
    with OpenAIServer() as server:
        server.faults = ["400"]
        async with OpenAIClient(server.url, backoff=0) as client:
            with pytest.raises(BackendError) as err:
                await client.chat("demo-model", HI, stream=False)
            with pytest.raises(BackendError) as missing:
                await client.chat("no-such-model", HI, stream=False)
    assert len(server.requests) == 1 and err.value.status == 400 and not err.value.retryable
    assert str(err.value) == f"HTTP 400 from {server.url}/chat/completions: injected 400"
    assert str(missing.value) == f"HTTP 404 from {server.url}/chat/completions: The model `no-such-model` does not exist."


@pytest.mark.parametrize("stream", [True, False])
async def test_5xx_and_429_are_retried_with_a_bound(stream):
    with OpenAIServer(reply={"content": "fine"}) as server:
        server.faults = ["503", "429", "500"]
        async with OpenAIClient(server.url, retries=3, backoff=0) as client:
            result = await client.chat("demo-model", HI, stream=stream)
        assert (result.content, result.attempts) == ("fine", 4)
        server.faults = ["500"] * 3
        async with OpenAIClient(server.url, retries=2, backoff=0) as client:
            with pytest.raises(BackendError) as err:
                await client.chat("demo-model", HI, stream=stream)
    assert len(server.requests) == 7 and err.value.status == 500
    assert str(err.value) == f"HTTP 500 from {server.url}/chat/completions: injected 500 (after 3 attempts)"


async def test_retries_back_off_exponentially(monkeypatch):
    waits = []
    sleep = asyncio.sleep

    async def timed_sleep(seconds):
        waits.append(seconds)
        await sleep(0)

    monkeypatch.setattr(clients.asyncio, "sleep", timed_sleep)
    with OpenAIServer() as server:
        server.faults = ["503"] * 4
        async with OpenAIClient(server.url, retries=3, backoff=0.5) as client:
            with pytest.raises(BackendError):
                await client.chat("demo-model", HI, stream=False)
    assert waits == [0.5, 1.0, 2.0] and len(server.requests) == 4


@pytest.mark.parametrize("client_class, path", [(OpenAIClient, "/chat/completions"), (OllamaClient, "/api/chat")])
async def test_nothing_listening_is_retried_then_named(client_class, path):
    url = closed_port_url()
    url = url if client_class is OpenAIClient else url.removesuffix("/v1")
    async with client_class(url, retries=2, backoff=0) as client:
        with pytest.raises(BackendError) as err:
            await client.chat("demo-model", HI)
    assert err.value.kind == "connect" and err.value.retryable
    assert str(err.value).startswith(f"cannot connect to {url}{path}") and "(after 3 attempts)" in str(err.value)


@pytest.mark.parametrize("fault", ["slow", "stall"])
async def test_a_server_slower_than_the_timeout_is_a_timeout(fault):
    with OpenAIServer(hang=2.0) as server:
        server.faults = [fault]
        async with OpenAIClient(server.url, timeout=0.3, backoff=0) as client:
            with pytest.raises(BackendError) as err:
                await client.chat("demo-model", HI)
    # Before the headers or between two events: the read timeout counts from the last byte either way.
    assert err.value.kind == "timeout" and "no answer from" in str(err.value) and "ReadTimeout" in str(err.value)
    assert len(server.requests) == 1


async def test_a_slow_stream_within_the_timeout_is_read_whole():
    # Each event comes 0.25 s after the last: the whole answer takes longer than the 1 s timeout,
    # the wait for any one byte never does.
    with OpenAIServer(reply={"content": "one two three four"}, chunk_delay=0.25) as server:
        async with OpenAIClient(server.url, timeout=1.0) as client:
            result = await client.chat("demo-model", HI)
    assert result.content == "one two three four" and result.latency_s > 1.0


async def test_a_server_that_goes_away_between_requests():
    server = OpenAIServer(reply={"content": "ok"}).start()
    async with OpenAIClient(server.url, retries=2, backoff=0) as client:
        assert (await client.chat("demo-model", HI)).content == "ok"
        server.faults = ["shutdown"]  # answers nothing, stops listening and closes the kept-alive connection
        with pytest.raises(BackendError) as gone:
            await client.chat("demo-model", HI)
        with pytest.raises(BackendError) as refused:
            await client.chat("demo-model", HI)
    assert gone.value.kind == "truncated"
    assert refused.value.kind == "connect" and "(after 3 attempts)" in str(refused.value)


async def test_a_non_streamed_body_that_is_not_json_is_malformed():
    with OpenAIServer(models_body=b"<html>busy</html>") as server:
        async with OpenAIClient(server.url) as client:
            with pytest.raises(BackendError) as err:
                await client.list_models()
    assert err.value.kind == "malformed" and "'<html>busy</html>'" in str(err.value)


async def test_preflight_warns_on_an_unreadable_model_list_and_refuses_a_missing_model():
    # mlx_lm.server answers /v1/models with 200 and an empty body when the HF cache dir does not exist.
    prompt_set = load_prompt_set(PROMPTS)
    with OpenAIServer(models_body=b"") as server:
        warnings = await preflight(new_settings("openai", "m", prompt_set, url=server.url))
    assert len(warnings) == 1 and "could not read the model list" in warnings[0]
    with OpenAIServer(models=("qwen2.5-0.5b-instruct",)) as server:
        with pytest.raises(EvalCannotRun, match=r"model 'demo' is not served at .* \(it lists: qwen2.5-0.5b-instruct\)$"):
            await preflight(new_settings("openai", "demo", prompt_set, url=server.url))
        assert await preflight(new_settings("openai", "qwen2.5-0.5b-instruct", prompt_set, url=server.url)) == []


async def test_an_eval_against_a_misbehaving_server_records_each_fault_and_completes(tmp_path):
    prompt_set = load_prompt_set(PROMPTS)
    with OpenAIServer(reply={"content": "hello"}, hang=4.0) as server:
        # One case at a time, so the faults meet the cases in order; case 1 is retried through two 503s.
        server.faults = ["503", "503", None, "slow", "die", "no_done", "error_event", "finish_no_done"]
        settings = new_settings("openai", "demo-model", prompt_set, url=server.url, limit=7, concurrency=1,
                                timeout=1.0)
        eval_dir = create_eval(settings, tmp_path / "evals")
        summary = await run_eval(eval_dir, client=OpenAIClient(server.url, timeout=1.0, backoff=0.01,
                                                               max_connections=1))
    records = {r["id"]: r for r in read_results(eval_dir)}
    ids = settings.case_ids
    kinds = [records[i]["error"]["kind"] if records[i]["error"] else None for i in ids]
    assert kinds == [None, "timeout", "truncated", "truncated", "server", None, None]
    assert records[ids[0]]["attempts"] == 3
    # "hello" calls no tool: every answered case fails (the no-tool case-003 is the one the server cut off).
    assert {i: records[i]["passed"] for i in ids} == dict.fromkeys(ids, False)
    assert (summary["total"], summary["passed"], summary["failed"], summary["errors"]) == (7, 0, 3, 4)
    assert json.loads((eval_dir / "eval.json").read_text())["state"] == "completed"
