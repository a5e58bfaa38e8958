"""The engine's ASGI guard, driven with ASGI messages: what reaches the app and what is refused."""

import asyncio
import itertools
import json

import pytest
from nas_ai_engine import bounds, metrics
from nas_ai_engine.guard import Guard

KEY = "backend-key"
LIMITS = bounds.Limits(max_tokens=512, max_logprobs=20, max_logit_bias=300)


def _guard(app, health=None, extra_metrics=None, max_body_bytes=1 << 20):
    return Guard(app, health or {}, KEY, LIMITS, max_body_bytes, extra_metrics)


class RecordingApp:
    """Stands in for llama-cpp-python's app: records the body it was given."""

    def __init__(self):
        self.bodies = []

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.bodies.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _exchange(guard, method, path, chunks=(b"",), key=KEY) -> list[dict]:
    """The ASGI messages `guard` sends for a request whose body arrives in `chunks`."""
    chunks, sent = list(chunks), []
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []

    async def receive():
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    asyncio.run(guard({"type": "http", "method": method, "path": path, "headers": headers}, receive, send))
    return sent


def _request(guard, method, path, body=b"", key=KEY):
    sent = _exchange(guard, method, path, [body[:10], body[10:]], key)
    status = sent[0]["status"]
    payload = json.loads(sent[1]["body"]) if sent[1]["body"] else None
    return status, payload


def test_health_answers_without_the_app():
    app = RecordingApp()
    status, payload = _request(_guard(app, {"status": "ok", "model": "m"}), "GET", "/health")
    assert (status, payload["model"], app.bodies) == (200, "m", [])


def test_a_broken_grammar_never_reaches_the_engine():
    app = RecordingApp()
    body = json.dumps({"messages": [], "grammar": "root ::= ((((("}).encode()
    status, payload = _request(_guard(app), "POST", "/v1/chat/completions", body)
    assert status == 400
    assert payload["error"]["param"] == "grammar"
    assert "missing `)`" in payload["error"]["message"]
    assert app.bodies == []


def test_a_good_request_reaches_the_engine_whole():
    app = RecordingApp()
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}],
                       "grammar": 'root ::= "yes" | "no"'}).encode()
    status, _ = _request(_guard(app), "POST", "/v1/chat/completions", body)
    assert status == 200
    assert app.bodies == [body]


def test_a_non_string_grammar_is_refused():
    app = RecordingApp()
    status, payload = _request(_guard(app), "POST", "/v1/completions",
                               json.dumps({"prompt": "x", "grammar": {"a": 1}}).encode())
    assert status == 400 and "must be a string" in payload["error"]["message"]


def test_a_body_that_is_not_a_json_object_is_refused_before_the_engine():
    app = RecordingApp()
    status, payload = _request(_guard(app), "POST", "/v1/chat/completions", b"not json at all")
    assert status == 400 and "not valid JSON" in payload["error"]["message"]
    status, payload = _request(_guard(app), "POST", "/v1/completions", b'["a", "list"]')
    assert status == 400 and "must be a JSON object" in payload["error"]["message"]
    assert app.bodies == []


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/embeddings"), ("POST", "/v1/messages"), ("POST", "/v1/responses"), ("POST", "/completion"),
    ("POST", "/v1/engines/copilot-codex/completions"), ("GET", "/props"), ("POST", "/slots/0?action=save"),
    ("POST", "/v1/chat/completions/"), ("POST", "/V1/chat/completions"), ("GET", "/"),
])
def test_paths_outside_the_allow_list_get_a_json_404_without_the_app(method, path):
    app = RecordingApp()
    status, payload = _request(_guard(app), method, path, b'{"prompt": "x"}')
    assert (status, payload["error"]["code"], app.bodies) == (404, "not_found", [])
    assert "POST /v1/chat/completions" in payload["error"]["message"]


def test_a_wrong_method_on_a_served_path_gets_405_naming_the_method():
    sent = _exchange(_guard(RecordingApp()), "GET", "/v1/chat/completions")
    assert sent[0]["status"] == 405 and (b"allow", b"POST") in sent[0]["headers"]


@pytest.mark.parametrize("key", ["", "wrong", KEY.upper()])
def test_a_request_without_the_backend_key_is_refused_before_its_body_is_read(key):
    received = []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent = []

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    asyncio.run(_guard(RecordingApp())({"type": "http", "method": "POST", "path": "/v1/completions",
                                         "headers": headers}, receive, send))
    assert sent[0]["status"] == 401 and received == []


def test_models_reach_the_app_with_the_key():
    assert _request(_guard(RecordingApp()), "GET", "/v1/models")[0] == 200


def test_a_body_above_the_bound_is_refused_while_it_arrives():
    app = RecordingApp()
    chunks = [b"x" * 600, b"x" * 600, b"never read"]
    sent = _exchange(_guard(app, max_body_bytes=1000), "POST", "/v1/completions", chunks)
    assert sent[0]["status"] == 413 and app.bodies == []
    unread = [b"x" * 600, b"x" * 600, b"never read"]

    async def receive():
        return {"type": "http.request", "body": unread.pop(0), "more_body": bool(unread)}

    async def send(message):
        pass

    headers = [(b"authorization", f"Bearer {KEY}".encode())]
    asyncio.run(_guard(app, max_body_bytes=1000)({"type": "http", "method": "POST", "path": "/v1/completions",
                                                   "headers": headers}, receive, send))
    assert unread == [b"never read"]


@pytest.mark.parametrize("field, value, reason", [
    ("max_tokens", 513, "from 1 to 512"),
    ("max_tokens", -1, "from 1 to 512"),
    ("max_tokens", 0, "from 1 to 512"),  # llama-cpp-python reads 0 as "no limit"
    ("max_completion_tokens", 10**9, "from 1 to 512"),
    ("n_predict", -1, "from 1 to 512"),
    ("n_cmpl", 4, "one choice per request"),  # llama-server's own name for n
    ("prompt", ["a", "b"], "one prompt per request"),
    ("prompt", [[1, 2], [3]], "one prompt per request"),
    ("max_tokens", "100", "must be an integer"),
    ("n", 2, "one choice per request"),
    ("n", True, "one choice per request"),
    ("logprobs", 21, "from 0 to 20"),
    ("top_logprobs", 1000, "from 0 to 20"),
    ("n_probs", -5, "from 0 to 20"),
    ("logit_bias", {str(token): -100 for token in range(301)}, "301 entries; at most 300"),
    ("logit_bias", [[token, -100] for token in range(20000)], "20000 entries"),
    ("logit_bias", "everything", "must be an object"),
    ("dry_allowed_length", -3, "never negative"),
    ("top_k", -1, "never negative"),
    ("repeat_last_n", -2, "-1 for the whole context"),
    ("mirostat", 3, "0 (off), 1 or 2"),
    ("top_k", 1.5, "must be an integer"),
])
def test_request_fields_beyond_their_bounds_get_a_400_naming_the_field(field, value, reason):
    app = RecordingApp()
    body = json.dumps({"prompt": "x", field: value}).encode()
    status, payload = _request(_guard(app), "POST", "/v1/completions", body)
    assert (status, payload["error"]["param"], app.bodies) == (400, field, [])
    assert reason in payload["error"]["message"]


@pytest.mark.parametrize("fields", [
    {"max_tokens": 512, "n": 1, "logprobs": True, "top_logprobs": 20, "logit_bias": {"15": -100}},
    {"max_tokens": None, "n": None, "logprobs": 5, "repeat_last_n": -1, "dry_penalty_last_n": -1, "top_k": 0},
    {"mirostat": 2, "n_probs": 0, "dry_allowed_length": 2, "seed": -1},
    {"max_tokens": 1, "n_cmpl": 1, "prompt": ["one prompt in a list"]},
    {"max_tokens": 1, "prompt": [1, 2, 3]},
])
def test_requests_within_their_bounds_reach_the_engine_unchanged(fields):
    app = RecordingApp()
    body = json.dumps({"prompt": "x", **fields}).encode()
    assert _request(_guard(app), "POST", "/v1/completions", body)[0] == 200
    assert app.bodies == [body]


@pytest.mark.parametrize("body, reason", [
    (b"[" * 100_000, "nests arrays or objects deeper than 64"),
    (b'{"prompt": ' + b"[" * 100 + b"]" * 100 + b"}", "nests arrays or objects deeper than 64"),
    (b'{"prompt": "x", "grammar": "root ::= \\"\\ud800\\""}', "lone UTF-16 surrogate"),
    (b'{"messages": [{"role": "user", "content": "\\udfff"}]}', "lone UTF-16 surrogate"),
    (b'{"prompt": "x", "stop": ["\\ud83d"]}', "lone UTF-16 surrogate"),
])
def test_hostile_json_gets_a_400_never_a_500(body, reason):
    app = RecordingApp()
    status, payload = _request(_guard(app), "POST", "/v1/chat/completions", body)
    assert (status, app.bodies) == (400, [])
    assert reason in payload["error"]["message"]


@pytest.mark.parametrize("body, reason", [
    (b'{"prompt": "x", "temperature": NaN}', "not valid JSON"),
    (b'{"prompt": "x", "top_p": -Infinity}', "not valid JSON"),
    (b'{"prompt": "say \xed\xa0\x80"}', "not UTF-8"),  # a surrogate as raw bytes, no escape
    ('{"prompt": "x"}'.encode("utf-16"), "not UTF-8"),
])
def test_json_the_engines_would_answer_with_a_500_gets_a_400(body, reason):
    app = RecordingApp()
    status, payload = _request(_guard(app), "POST", "/v1/completions", body)
    assert (status, app.bodies) == (400, [])
    assert reason in payload["error"]["message"]


def test_an_absent_max_tokens_is_filled_in_when_the_operator_set_one():
    app = RecordingApp()
    limits = bounds.Limits(max_tokens=64, max_logprobs=20, max_logit_bias=300, default_max_tokens=64)
    guard = Guard(app, {}, KEY, limits, 1 << 20)
    assert _request(guard, "POST", "/v1/completions", b'{"prompt": "x"}')[0] == 200
    assert json.loads(app.bodies[0]) == {"prompt": "x", "max_tokens": 64}
    assert _request(guard, "POST", "/v1/completions", b'{"prompt": "x", "max_tokens": 8}')[0] == 200
    assert app.bodies[1] == b'{"prompt": "x", "max_tokens": 8}'  # a request within bounds is passed as sent


def test_a_clients_own_choice_of_slot_is_dropped():
    app = RecordingApp()
    assert _request(_guard(app), "POST", "/v1/completions", b'{"prompt": "x", "id_slot": 3}')[0] == 200
    assert json.loads(app.bodies[0]) == {"prompt": "x"}


@pytest.mark.parametrize("fields", [
    {"response_format": {"type": "json_object", "schema": {"type": "array", "minItems": 100_000_000}}},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
     "tool_choice": {"type": "function", "function": {"name": "f"}}},
    {"functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": {"name": "f"}},
])
def test_llama_cpp_python_takes_no_json_schema(fields):
    """Its own converter expands a schema in memory and can hand llama.cpp a grammar that aborts it."""
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()
    app = RecordingApp()
    status, payload = _request(_guard(app, {"server": "llama-cpp-python"}), "POST", "/v1/chat/completions", body)
    assert (status, app.bodies) == (400, []) and "llama-server" in payload["error"]["message"]
    # llama-server converts schemas in C++, within llama.cpp's own limits: passed on.
    assert _request(_guard(app, {"server": "llama-server"}), "POST", "/v1/chat/completions", body)[0] == 200


def test_llama_cpp_python_takes_plain_json_mode():
    body = json.dumps({"messages": [], "response_format": {"type": "json_object"}}).encode()
    assert _request(_guard(RecordingApp(), {"server": "llama-cpp-python"}), "POST", "/v1/chat/completions", body)[0] == 200


def test_a_surrogate_pair_is_a_character_and_passes():
    app = RecordingApp()
    body = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00 hi"}]}'
    assert _request(_guard(app), "POST", "/v1/chat/completions", body)[0] == 200


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
    sent = _exchange(_guard(StreamingApp()), "POST", "/v1/chat/completions", [b'{"messages": [], "stream": true}'])
    after = (_sample("nas_ai_engine_generated_tokens_total"),
             _sample("nas_ai_engine_time_to_first_token_seconds_count", {"endpoint": "/v1/chat/completions"}),
             _sample("nas_ai_engine_requests_total", {"endpoint": "/v1/chat/completions", "status": "200"}))
    assert [a - b for a, b in zip(after, before)] == [3, 1, 1]
    assert _sample("nas_ai_engine_requests_in_flight") == 0
    assert len(sent) == 6  # the stream reached the client whole


def test_metrics_endpoint_answers_without_the_app():
    app = RecordingApp()
    sent = _exchange(_guard(app), "GET", "/metrics")
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
                           "timings": {"cache_n": 5, "prompt_n": 7, "prompt_ms": 1.0, "predicted_ms": 2.0}}).encode()
        await send({"type": "http.response.body", "body": b"data: " + last + b"\n\ndata: [DONE]\n\n"})


def _prompt_tokens() -> tuple[float, float]:
    return (_sample("nas_ai_engine_prompt_tokens_total", {"cached": "true"}),
            _sample("nas_ai_engine_prompt_tokens_total", {"cached": "false"}))


def test_a_streams_prompt_tokens_come_from_llama_servers_timings_cached_and_read():
    before = _prompt_tokens()
    _exchange(_guard(LlamaServerApp()), "POST", "/v1/completions", [b'{"prompt": "x", "stream": true}'])
    assert [a - b for a, b in zip(_prompt_tokens(), before)] == [5, 7]
    # What the benchmark and the lab tests read of it: the same two series from the /metrics text.
    from prometheus_client import generate_latest
    exposed = metrics.prompt_tokens_in(generate_latest(metrics.REGISTRY).decode().splitlines())
    assert (exposed["true"], exposed["false"]) == _prompt_tokens()


class PlainApp:
    """Answers once, plain, with the usage (and llama-server's timings when given)."""

    def __init__(self, answer: dict):
        self.answer = answer

    async def __call__(self, scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(self.answer).encode()})


@pytest.mark.parametrize(("answer", "expected"), [
    # llama-server: its timings say what the slot's cache held and what it read.
    ({"usage": {"prompt_tokens": 40, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 32}},
      "timings": {"cache_n": 32, "prompt_n": 8}}, [32, 8]),
    # An OpenAI-shaped usage alone: cached_tokens of prompt_tokens.
    ({"usage": {"prompt_tokens": 40, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 30}}},
     [30, 10]),
    # llama-cpp-python: prompt tokens, nothing about a cache: all read.
    ({"usage": {"prompt_tokens": 12, "completion_tokens": 2}}, [0, 12]),
    # Nonsense is not counted.
    ({"usage": {"prompt_tokens": 5, "completion_tokens": 2}, "timings": {"cache_n": "x", "prompt_n": 5}}, [0, 0]),
])
def test_a_plain_answers_prompt_tokens_are_counted_cached_and_read(answer, expected):
    before = _prompt_tokens()
    _exchange(_guard(PlainApp(answer)), "POST", "/v1/completions", [b'{"prompt": "x"}'])
    assert [a - b for a, b in zip(_prompt_tokens(), before)] == expected


def test_the_engines_own_metrics_are_appended():
    async def engine_metrics():
        return b"# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 2\n"

    sent = _exchange(_guard(RecordingApp(), extra_metrics=engine_metrics), "GET", "/metrics")
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
    _exchange(_guard(SplittingApp()), "POST", "/v1/chat/completions", [b'{"messages": [], "stream": true}'])
    after = (_sample("nas_ai_engine_generated_tokens_total"),
             _sample("nas_ai_engine_time_to_first_token_seconds_count", labels))
    assert [a - b for a, b in zip(after, before)] == [3, 1]
