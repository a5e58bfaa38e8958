"""The engine's ASGI guard, driven with ASGI messages: what reaches the app and what is refused."""

import asyncio
import itertools
import json

from nas_ai_engine import metrics
from nas_ai_engine.guard import Guard


class RecordingApp:
    """Stands in for llama-cpp-python's app: records the body it was given."""

    def __init__(self):
        self.bodies = []

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.bodies.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _exchange(guard, method, path, chunks=(b"",)) -> list[dict]:
    """The ASGI messages `guard` sends for a request whose body arrives in `chunks`."""
    chunks, sent = list(chunks), []

    async def receive():
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    asyncio.run(guard({"type": "http", "method": method, "path": path}, receive, send))
    return sent


def _request(guard, method, path, body=b""):
    sent = _exchange(guard, method, path, [body[:10], body[10:]])
    status = sent[0]["status"]
    payload = json.loads(sent[1]["body"]) if sent[1]["body"] else None
    return status, payload


def test_health_answers_without_the_app():
    app = RecordingApp()
    status, payload = _request(Guard(app, {"status": "ok", "model": "m"}), "GET", "/health")
    assert (status, payload["model"], app.bodies) == (200, "m", [])


def test_a_broken_grammar_never_reaches_the_engine():
    app = RecordingApp()
    body = json.dumps({"messages": [], "grammar": "root ::= ((((("}).encode()
    status, payload = _request(Guard(app, {}), "POST", "/v1/chat/completions", body)
    assert status == 400
    assert payload["error"]["param"] == "grammar"
    assert "missing `)`" in payload["error"]["message"]
    assert app.bodies == []


def test_a_good_request_reaches_the_engine_whole():
    app = RecordingApp()
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}],
                       "grammar": 'root ::= "yes" | "no"'}).encode()
    status, _ = _request(Guard(app, {}), "POST", "/v1/chat/completions", body)
    assert status == 200
    assert app.bodies == [body]


def test_a_non_string_grammar_is_refused():
    app = RecordingApp()
    status, payload = _request(Guard(app, {}), "POST", "/v1/completions",
                               json.dumps({"prompt": "x", "grammar": {"a": 1}}).encode())
    assert status == 400 and "must be a string" in payload["error"]["message"]


def test_a_body_that_is_not_a_json_object_is_refused_before_the_engine():
    app = RecordingApp()
    status, payload = _request(Guard(app, {}), "POST", "/v1/chat/completions", b"not json at all")
    assert status == 400 and "not valid JSON" in payload["error"]["message"]
    status, payload = _request(Guard(app, {}), "POST", "/v1/completions", b'["a", "list"]')
    assert status == 400 and "must be a JSON object" in payload["error"]["message"]
    assert app.bodies == []


def test_embeddings_get_a_clear_refusal_instead_of_a_500():
    app = RecordingApp()
    status, payload = _request(Guard(app, {"model": "smollm2"}), "POST", "/v1/embeddings",
                               json.dumps({"input": "hello"}).encode())
    assert status == 400 and "serves no embeddings" in payload["error"]["message"]
    assert app.bodies == []


class StreamingApp:
    """Sends an SSE stream of three tokens, as llama-cpp-python's server does."""

    async def __call__(self, scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b'data: {"choices": [{"delta": {"role": "assistant"}}]}\r\n\r\n', "more_body": True})
        for token in ("Hel", "lo", "!"):
            chunk = json.dumps({"choices": [{"delta": {"content": token}}]}).encode()
            await send({"type": "http.response.body", "body": b"data: " + chunk + b"\r\n\r\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\r\n\r\n"})


def _sample(name, labels=None):
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0


def test_metrics_count_a_streamed_request():
    before = (_sample("nas_ai_engine_generated_tokens_total"),
              _sample("nas_ai_engine_time_to_first_token_seconds_count", {"endpoint": "/v1/chat/completions"}),
              _sample("nas_ai_engine_requests_total", {"endpoint": "/v1/chat/completions", "status": "200"}))
    sent = _exchange(Guard(StreamingApp(), {}), "POST", "/v1/chat/completions", [b'{"messages": [], "stream": true}'])
    after = (_sample("nas_ai_engine_generated_tokens_total"),
             _sample("nas_ai_engine_time_to_first_token_seconds_count", {"endpoint": "/v1/chat/completions"}),
             _sample("nas_ai_engine_requests_total", {"endpoint": "/v1/chat/completions", "status": "200"}))
    assert [a - b for a, b in zip(after, before)] == [3, 1, 1]
    assert _sample("nas_ai_engine_requests_in_flight") == 0
    assert len(sent) == 6  # the stream reached the client whole


def test_metrics_endpoint_answers_without_the_app():
    app = RecordingApp()
    sent = _exchange(Guard(app, {}), "GET", "/metrics")
    assert sent[0]["status"] == 200 and b"nas_ai_engine_requests_in_flight" in sent[1]["body"]
    assert app.bodies == []


class LlamaServerApp:
    """Streams as llama-server does: its last chunk carries its own timings."""

    async def __call__(self, scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        chunk = json.dumps({"choices": [{"delta": {"content": "Hi"}}]}).encode()
        await send({"type": "http.response.body", "body": b"data: " + chunk + b"\n\n", "more_body": True})
        last = json.dumps({"choices": [{"finish_reason": "length", "delta": {}}],
                           "timings": {"prompt_n": 7, "prompt_ms": 1.0, "predicted_ms": 2.0}}).encode()
        await send({"type": "http.response.body", "body": b"data: " + last + b"\n\ndata: [DONE]\n\n"})


def test_a_streams_prompt_tokens_come_from_llama_servers_timings():
    before = _sample("nas_ai_engine_prompt_tokens_total")
    _exchange(Guard(LlamaServerApp(), {}), "POST", "/v1/completions", [b'{"prompt": "x", "stream": true}'])
    assert _sample("nas_ai_engine_prompt_tokens_total") - before == 7


def test_the_engines_own_metrics_are_appended():
    async def engine_metrics():
        return b"# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 2\n"

    sent = _exchange(Guard(RecordingApp(), {}, engine_metrics), "GET", "/metrics")
    body = sent[1]["body"].decode()
    assert "nas_ai_engine_requests_in_flight" in body and body.endswith("llamacpp:requests_processing 2\n")


class SplittingApp:
    """Streams three tokens with the second event cut in two ASGI messages mid-JSON, and the
    third cut between its `\\r` and `\\n`, as a proxy relaying the child's reads may."""

    async def __call__(self, scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        events = b"".join(b"data: " + json.dumps({"choices": [{"delta": {"content": token}}]}).encode()
                          + b"\r\n\r\n" for token in ("Hel", "lo", "!"))
        second = events.index(b"data:", 1)
        third = events.index(b"data:", second + 1)
        cuts = [0, second + 20, third + events[third:].index(b"\r") + 1, len(events)]
        for start, end in itertools.pairwise(cuts):
            await send({"type": "http.response.body", "body": events[start:end], "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\r\n\r\n"})


def test_an_event_split_across_two_body_messages_is_counted_once():
    labels = {"endpoint": "/v1/chat/completions"}
    before = (_sample("nas_ai_engine_generated_tokens_total"),
              _sample("nas_ai_engine_time_to_first_token_seconds_count", labels))
    _exchange(Guard(SplittingApp(), {}), "POST", "/v1/chat/completions", [b'{"messages": [], "stream": true}'])
    after = (_sample("nas_ai_engine_generated_tokens_total"),
             _sample("nas_ai_engine_time_to_first_token_seconds_count", labels))
    assert [a - b for a, b in zip(after, before)] == [3, 1]
