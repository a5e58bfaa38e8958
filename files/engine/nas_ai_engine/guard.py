"""ASGI middleware in front of llama-cpp-python's app: `/health` without the engine's request lock,
and refusal of request fields that would crash the engine before they reach it."""

import json

from nas_ai_engine.gbnf_check import GrammarError, check

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
    def __init__(self, app, health: dict):
        self.app = app
        self.health = health

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/health" and scope["method"] in ("GET", "HEAD"):
            # Answered here, never behind llama-cpp-python's lock: the model loaded and warmed
            # up before the port opened, so an answer means ready.
            return await _send_json(send, 200, self.health)
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
        refusal = _refusal(body)
        if refusal:
            return await _send_json(send, 400, refusal)

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _refusal(body: bytes) -> dict | None:
    try:
        request = json.loads(body)
    except ValueError:
        return None  # the app answers malformed JSON with its own 422
    if not isinstance(request, dict):
        return None
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
