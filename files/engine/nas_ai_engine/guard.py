"""ASGI middleware in front of the engine (llama-cpp-python's app, or the proxy to llama-server):
`/health` and `/metrics` without the engine's request lock, refusal of request fields that would
crash the engine before they reach it, and the request metrics."""

import json
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nas_ai_engine import metrics
from nas_ai_engine.gbnf_check import GrammarError, check
from nas_ai_engine.sse import DataParser

GUARDED_PATHS = {"/v1/chat/completions", "/v1/completions"}
MAX_BODY_BYTES = 8 * 1024 * 1024


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _invalid(message: str, param: str | None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}


class Guard:
    def __init__(self, app, health: dict, extra_metrics=None):
        self.app = app
        self.health = health
        self.extra_metrics = extra_metrics  # async () -> bytes: the engine's own exposition text

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/health" and scope["method"] in ("GET", "HEAD"):
            # Answered here, never behind llama-cpp-python's lock: the model loaded and warmed
            # up before the port opened, so an answer means ready.
            return await _send_json(send, 200, self.health)
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            body = generate_latest(metrics.REGISTRY)
            if self.extra_metrics is not None:
                body += await self.extra_metrics()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())]})
            return await send({"type": "http.response.body", "body": body})
        if scope["path"] == "/v1/embeddings":
            # The chat model is loaded for generation; llama-cpp-python would answer with a 500.
            return await _send_json(send, 400, _invalid(
                f"model `{self.health.get('model')}` on this service serves no embeddings; "
                "it generates text through /v1/chat/completions and /v1/completions", "model"))
        if scope["method"] != "POST" or scope["path"] not in GUARDED_PATHS:
            return await self.app(scope, receive, send)

        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return await _send_json(send, 413, _invalid("request body too large", None))
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        endpoint = scope["path"]
        refusal = _refusal(body)
        if refusal:
            metrics.REQUESTS.labels(endpoint, "400").inc()
            return await _send_json(send, 400, refusal)

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
            await self.app(scope, replay, observer.send)
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
            except (ValueError, AttributeError):
                return
            metrics.PROMPT_TOKENS.inc(usage.get("prompt_tokens", 0))
            metrics.GENERATED_TOKENS.inc(usage.get("completion_tokens", 0))
        elif self.timings:  # a stream: llama-server's count of the prompt it processed
            metrics.PROMPT_TOKENS.inc(self.timings.get("prompt_n", 0))


def _refusal(body: bytes) -> dict | None:
    try:
        request = json.loads(body)
    except ValueError as error:  # both engines would answer 500
        return _invalid(f"the request body is not valid JSON: {error}", None)
    if not isinstance(request, dict):
        return _invalid("the request body must be a JSON object", None)
    grammar = request.get("grammar")
    if grammar is None:
        return None
    if not isinstance(grammar, str):
        return _invalid("`grammar` must be a string of GBNF", "grammar")
    try:
        check(grammar)
    except GrammarError as error:
        return _invalid(f"`grammar` is not valid GBNF: {error}", "grammar")
    return None
