"""ASGI middleware in front of the engine (llama-cpp-python's app, or the proxy to llama-server):
`/health` and `/metrics` without the engine's request lock, an allow-list of the OpenAI paths the
stack serves, the backend key checked before a body is read, refusal of request fields that would
crash or overload the engine before they reach it, and the request metrics."""

import asyncio
import hmac
import json
import re
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nas_ai_engine import bounds, metrics
from nas_ai_engine.gbnf_check import GrammarError, check
from nas_ai_engine.sse import DataParser

# path -> method: everything the engine serves besides /health and /metrics. Every other path of
# either engine (llama-server's /completion, /v1/messages, /props, llama-cpp-python's
# /v1/engines/...) is a 404 here, so no generation goes around the guard, its tickets or metrics.
ROUTES = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET"}
GUARDED_PATHS = {path for path, method in ROUTES.items() if method == "POST"}
NOT_FOUND = ("not found: this service answers POST /v1/chat/completions, POST /v1/completions, "
             "GET /v1/models and GET /health")
MAX_JSON_DEPTH = 64
# A \u escape of a UTF-16 surrogate: only then can a parsed string hold a lone one.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def _send_json(send, status: int, payload: dict, headers=()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _invalid(message: str, param: str | None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


class Guard:
    def __init__(self, app, health: dict, api_key: str, limits: bounds.Limits, max_body_bytes: int,
                 extra_metrics=None):
        self.app = app
        self.health = health
        self.authorization = f"Bearer {api_key}".encode()
        self.limits, self.max_body_bytes = limits, max_body_bytes
        self.extra_metrics = extra_metrics  # async () -> bytes: the engine's own exposition text

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if path == "/health" and method in ("GET", "HEAD"):
            # Answered here, never behind llama-cpp-python's lock: the model loaded and warmed
            # up before the port opened, so an answer means ready.
            return await _send_json(send, 200, self.health)
        if path == "/metrics" and method == "GET":
            body = generate_latest(metrics.REGISTRY)
            if self.extra_metrics is not None:
                body += await self.extra_metrics()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())]})
            return await send({"type": "http.response.body", "body": body})
        if path not in ROUTES:
            return await _send_json(send, 404, _error(NOT_FOUND, "not_found"))
        if method != ROUTES[path]:
            return await _send_json(send, 405, _error(f"{path} takes {ROUTES[path]} alone", "method_not_allowed"),
                                    [(b"allow", ROUTES[path].encode())])
        # Before the body is read: a caller without the key makes the front parse nothing.
        if not hmac.compare_digest(dict(scope.get("headers") or []).get(b"authorization", b""), self.authorization):
            return await _send_json(send, 401, _error("missing or wrong backend key", "invalid_api_key"))
        if path not in GUARDED_PATHS:
            return await self.app(scope, receive, send)

        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await _send_json(send, 413, _invalid(
                    f"request body larger than {self.max_body_bytes} bytes", None))
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        endpoint = path
        refusal, request = _refusal(body, self.limits, self.health.get("server"))
        if refusal is None and isinstance(request.get("grammar"), str):
            # A thread: a grammar may take the check a good part of a second; streams go on meanwhile.
            refusal = await asyncio.to_thread(_grammar_refusal, request["grammar"])
        if refusal:
            metrics.REQUESTS.labels(endpoint, "400").inc()
            return await _send_json(send, 400, refusal)
        # The slot is the front's to choose: a client that picks one could hold a slot's
        # conversation up or probe what its cache holds.
        chose_slot = "id_slot" in request
        request.pop("id_slot", None)
        if bounds.filled_in(request, self.limits) or chose_slot:
            body = json.dumps(request).encode()

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        arrival = time.monotonic()
        metrics.ARRIVAL.set(arrival)
        observer = _ResponseObserver(endpoint, arrival, send)
        metrics.IN_FLIGHT.inc()
        try:
            # The parsed body goes along: the front reads it to choose a slot, without parsing again.
            await self.app(dict(scope, nas_ai_request=request), replay, observer.send)
        finally:
            metrics.IN_FLIGHT.dec()
            observer.finish()


class _ResponseObserver:
    """Watches what the app sends: status, first text chunk, token counts."""

    def __init__(self, endpoint: str, arrival: float, send):
        self.endpoint, self.arrival, self.downstream = endpoint, arrival, send
        self.status, self.streaming, self.first_token_seen = "500", False, False
        self.plain_body = []
        self.events = DataParser()  # an event may be cut across two body messages
        self.timings = None  # llama-server's, in its last chunk

    async def send(self, message):
        if message["type"] == "http.response.start":
            self.status = str(message["status"])
            headers = dict(message.get("headers") or [])
            self.streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and message.get("body"):
            if self.streaming:
                self._stream_chunk(message["body"])
            else:
                self.plain_body.append(message["body"])
        await self.downstream(message)

    def _stream_chunk(self, data: bytes) -> None:
        for payload in self.events.feed(data):
            try:
                chunk = json.loads(payload)
                choice = (chunk.get("choices") or [{}])[0]
            except (ValueError, AttributeError):
                continue
            if isinstance(chunk.get("timings"), dict):
                self.timings = chunk["timings"]
            text = (choice.get("delta") or {}).get("content") or choice.get("text")
            if text:
                metrics.GENERATED_TOKENS.inc()
                if not self.first_token_seen:
                    self.first_token_seen = True
                    metrics.TIME_TO_FIRST_TOKEN.labels(self.endpoint).observe(time.monotonic() - self.arrival)

    def finish(self) -> None:
        metrics.REQUESTS.labels(self.endpoint, self.status).inc()
        metrics.DURATION.labels(self.endpoint).observe(time.monotonic() - self.arrival)
        if self.plain_body and self.status == "200":
            try:
                answer = json.loads(b"".join(self.plain_body))
                usage = answer.get("usage") or {}
                timings = answer.get("timings")
            except (ValueError, AttributeError):
                return
            _count_prompt(timings if isinstance(timings, dict) else None, usage)
            metrics.GENERATED_TOKENS.inc(usage.get("completion_tokens", 0))
        elif self.timings:  # a stream: llama-server's timings, in its last chunk
            _count_prompt(self.timings, {})


def _count_prompt(timings: dict | None, usage: dict) -> None:
    """Prompt tokens a slot's cache held (llama-server's cache_n) and those it read (prompt_n);
    without timings (llama-cpp-python), the usage's prompt tokens, all read."""
    if timings is not None:
        cached, read = timings.get("cache_n", 0), timings.get("prompt_n", 0)
    else:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        read = usage.get("prompt_tokens", 0) - cached
    if isinstance(cached, int) and isinstance(read, int) and cached >= 0 and read >= 0:
        metrics.PROMPT_TOKENS.labels("true").inc(cached)
        metrics.PROMPT_TOKENS.labels("false").inc(read)


def _json_schema_field(request: dict) -> str | None:
    """The field through which llama-cpp-python would build a grammar from a JSON schema itself."""
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and "schema" in response_format:
        return "response_format"
    for field, chosen in (("tools", "tool_choice"), ("functions", "function_call")):
        if request.get(field) is not None and isinstance(request.get(chosen), dict):
            return chosen
    return None


def _depth(value) -> int:
    """How deeply arrays and objects nest in `value`, without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        pending.extend((item, depth + 1) for item in value)
    return deepest


def _has_lone_surrogate(value) -> bool:
    pending = [value]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                return True
    return False


def _no_constant(name: str):
    raise ValueError(f"{name} is no JSON number")


def _refusal(body: bytes, limits: bounds.Limits, server: str | None) -> tuple[dict | None, dict | None]:
    """(a 400's payload for a request the engine must not see, the parsed request). Neither engine
    may get what it would answer with a 500 or a crash."""
    try:
        text = body.decode()  # strict: no UTF-16, no surrogate written as UTF-8 bytes
    except UnicodeDecodeError as error:
        return _invalid(f"the request body is not UTF-8: {error}", None), None
    try:
        request = json.loads(text, parse_constant=_no_constant)  # NaN and Infinity: llama-server's 500
    except RecursionError:
        return _invalid(f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH}", None), None
    except ValueError as error:
        return _invalid(f"the request body is not valid JSON: {error}", None), None
    return _request_refusal(body, request, limits, server), request


def _request_refusal(body: bytes, request, limits: bounds.Limits, server: str | None) -> dict | None:
    if not isinstance(request, dict):
        return _invalid("the request body must be a JSON object", None)
    if _depth(request) > MAX_JSON_DEPTH:
        return _invalid(f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH}", None)
    if SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(request):
        return _invalid("the request body holds a lone UTF-16 surrogate (\\uD800-\\uDFFF without its pair), "
                        "which is no character", None)
    try:
        bounds.check(request, limits)
    except bounds.OutOfBounds as error:
        return _invalid(str(error), error.field)
    if server == "llama-cpp-python":
        schema_field = _json_schema_field(request)
        if schema_field:
            return _invalid(f"`{schema_field}` asks for a JSON schema, which the llama-cpp-python engine does not "
                            "take (its converter expands a schema in memory and can hand llama.cpp a grammar that "
                            "aborts it): send a GBNF `grammar`, plain JSON mode, or use the llama-server engine",
                            schema_field)
    grammar = request.get("grammar")
    if grammar is not None and not isinstance(grammar, str):
        return _invalid("`grammar` must be a string of GBNF", "grammar")
    return None


def _grammar_refusal(grammar: str) -> dict | None:
    try:
        check(grammar)
    except GrammarError as error:
        return _invalid(f"`grammar` is not valid GBNF: {error}", "grammar")
    return None
