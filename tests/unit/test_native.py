"""llama-server's command line, as the engine process starts it, and the front's upstream."""

import asyncio
import json
import time
import types

import pytest
from nas_ai_engine import native, slots, uds_http

CONFIG = {
    "api_key": "backend-secret-key",
    "model": {"n_ctx": 2048, "n_batch": 512, "n_threads": 3},
    "native": {"binary": "/opt/nas-ai/engine/current/bin/llama-server",
               "socket": "/run/nas-ai-engine/llama-server.sock", "parallel": 4},
}


def _options(command: list[str]) -> dict[str, str | None]:
    options, key = {}, None
    for word in command[1:]:
        if word.startswith("--"):
            key = word
            options[key] = None
        else:
            options[key] = word
    return options


MODEL = {"path": "/data/models/m/" + "0" * 64 + ".gguf", "alias": "m", "sha256": "0" * 64}


def test_every_slot_gets_the_full_context_on_a_private_socket():
    command = native.command(native.with_model(CONFIG, MODEL))
    options = _options(command)
    assert command[0] == CONFIG["native"]["binary"]
    assert options["--host"] == "/run/nas-ai-engine/llama-server.sock"
    assert options["--parallel"] == "4" and options["--ctx-size"] == str(4 * 2048)
    assert "--no-kv-unified" in options  # n_ctx per slot, as the memory budget counted
    assert options["--threads"] == options["--threads-batch"] == "3"
    assert (options["--model"], options["--alias"]) == (MODEL["path"], "m")


def test_no_secret_on_the_command_line_and_nothing_outside_the_budget():
    command = native.command(native.with_model(CONFIG, MODEL))
    options = _options(command)
    assert CONFIG["api_key"] not in " ".join(command)  # passed as LLAMA_API_KEY instead
    assert options["--cache-ram"] == "0" and "--no-slots" in options and "--no-webui" in options


class _Backend:
    """A real HTTP server (uvicorn, as the llama-cpp-python workers run) on a Unix socket, in
    this event loop: /v1/completions takes 0.2 s of a slot; /stream sends 50 chunks then [DONE];
    /v1/chat/completions never answers until the client leaves; any other path is a 404 with a
    Content-Length body."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        self.busy = self.most = 0
        self.disconnects = 0

    async def __call__(self, scope, receive, send):
        self.bodies = [*getattr(self, "bodies", []), (await receive()).get("body", b"")]
        path = scope["path"]
        if path == "/v1/completions":
            self.busy += 1
            self.most = max(self.most, self.busy)
            await asyncio.sleep(0.2)
            self.busy -= 1
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"ok": true}'})
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            for number in range(50):
                await send({"type": "http.response.body", "body": b"data: %d\n\n" % number, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        elif path == "/v1/chat/completions":  # hangs until the client leaves
            if (await receive())["type"] == "http.disconnect":
                self.disconnects += 1
        else:
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"9")]})
            await send({"type": "http.response.body", "body": b"not found"})

    async def serve(self, body):
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self, uds=self.socket_path, log_level="warning", http="httptools",
                                                    lifespan="off"))
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            if serving.done():
                serving.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        try:
            return await body()
        finally:
            server.should_exit = True
            await serving


def _upstream(tickets: list[str]) -> native.Upstream:
    return native.Upstream("key", native.Pool(1, MODEL, [], tickets[:1], list(tickets)))


async def _call(upstream, path: str, body: bytes = b"{}", stay: float = 5.0, headers=(), parsed=None):
    """One request through the front's upstream, as uvicorn would hand it over (after the guard,
    with its parse of the body: `parsed`); the client stays `stay` seconds, then goes away."""
    sent, calls = [], {"n": 0}

    async def receive():
        calls["n"] += 1
        if calls["n"] == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(stay)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "headers": list(headers),
             "query_string": b""}
    if parsed is not None:
        scope["nas_ai_request"] = parsed
    await upstream(scope, receive, send)
    return sent


def test_the_front_sends_each_request_to_the_slot_it_chose_whatever_the_client_asked(tmp_path):
    backend = _Backend(str(tmp_path / "engine.sock"))
    question = {"prompt": "What is RAID 1?", "id_slot": 3}
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}

    async def requests():
        pool = native.Pool(1, MODEL, [], [backend.socket_path],
                           [slots.Slot(backend.socket_path, index) for index in range(4)])
        pool.slot_memory = slots.Slots(long_prompt_bytes=2048)
        upstream = native.Upstream("key", pool)
        session = [(b"x-nas-ai-session", b"alice:chat-1")]
        for parsed, headers in ((question, ()), ({"prompt": "x" * 3000}, session), (question, ()), (chat, session)):
            await _call(upstream, "/v1/completions", json.dumps(parsed).encode(), parsed=parsed, headers=headers)
        return pool

    pool = asyncio.run(backend.serve(requests))
    assert [json.loads(body)["id_slot"] for body in backend.bodies] == [0, 3, 0, 3]
    assert json.loads(backend.bodies[0])["prompt"] == "What is RAID 1?"
    assert sorted(ticket.index for ticket in pool.free) == [0, 1, 2, 3]  # every ticket back


def test_requests_beyond_the_tickets_wait_in_the_front_and_that_wait_is_measured(tmp_path):
    from nas_ai_engine import metrics

    backend = _Backend(str(tmp_path / "engine.sock"))

    def sample(name):
        return metrics.REGISTRY.get_sample_value(name) or 0

    async def three_requests():
        upstream = _upstream([backend.socket_path] * 2)
        answers = await asyncio.gather(*(_call(upstream, "/v1/completions") for _ in range(3)))
        return [answer[0]["status"] for answer in answers], [answer[1]["body"] for answer in answers]

    before = (sample("nas_ai_engine_queue_wait_seconds_count"), sample("nas_ai_engine_queue_wait_seconds_sum"))
    started = time.monotonic()
    statuses, bodies = asyncio.run(backend.serve(three_requests))
    elapsed = time.monotonic() - started
    assert statuses == [200, 200, 200] and bodies == [b'{"ok": true}'] * 3
    assert backend.most == 2 and 0.38 < elapsed < 2.5  # two at once, the third after them
    assert sample("nas_ai_engine_queue_wait_seconds_count") - before[0] == 3
    assert sample("nas_ai_engine_queue_wait_seconds_sum") - before[1] >= 0.18  # the third waited ~0.2 s


def test_a_stream_passes_through_whole_and_in_order_and_errors_keep_their_status(tmp_path):
    backend = _Backend(str(tmp_path / "engine.sock"))

    async def both():
        upstream = _upstream([backend.socket_path])
        return await _call(upstream, "/stream"), await _call(upstream, "/missing")

    stream, missing = asyncio.run(backend.serve(both))
    assert stream[0]["status"] == 200
    assert (b"content-type", b"text/event-stream") in stream[0]["headers"]
    assert not any(name in (b"transfer-encoding", b"connection") for name, _ in stream[0]["headers"])
    body = b"".join(message.get("body", b"") for message in stream[1:])
    assert body == b"".join(b"data: %d\n\n" % number for number in range(50)) + b"data: [DONE]\n\n"
    assert stream[-1]["more_body"] is False
    assert missing[0]["status"] == 404 and missing[1]["body"] == b"not found"


def test_a_client_that_leaves_closes_the_backend_connection_and_frees_its_ticket(tmp_path):
    backend = _Backend(str(tmp_path / "engine.sock"))

    async def leave_then_ask_again():
        upstream = _upstream([backend.socket_path])
        await _call(upstream, "/v1/chat/completions", stay=0.3)
        for _ in range(100):  # uvicorn notices the closed connection on its next read
            if backend.disconnects:
                break
            await asyncio.sleep(0.02)
        return len(upstream.pool.free)

    assert asyncio.run(backend.serve(leave_then_ask_again)) == 1
    assert backend.disconnects == 1


def test_a_cut_answer_is_an_error_not_a_short_success(tmp_path):
    socket_path = str(tmp_path / "cut.sock")

    async def cut_server():
        async def answer(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(answer, socket_path)
        async with server:
            reply = await uds_http.exchange(socket_path, "GET", "/", [])
            try:
                await reply.read()
            finally:
                reply.close()

    with pytest.raises(uds_http.BackendError, match="short"):
        asyncio.run(cut_server())


def test_a_child_that_cannot_be_reached_gets_a_503_the_gateway_retries_elsewhere(tmp_path):
    """Nothing reached the client yet: a 503 (nginx passes it to another engine), not a 500, and
    the ticket is back."""
    upstream = _upstream([str(tmp_path / "gone.sock")])
    sent = asyncio.run(_call(upstream, "/v1/completions"))
    assert sent[0]["status"] == 503
    assert b"engine_unavailable" in sent[1]["body"]
    assert len(upstream.pool.free) == 1


def _ticket_order(short_first_wait_s: float, arrivals: list[tuple[str, int, float]], frees: list[float],
                  tickets: int = 1) -> list[str]:
    """Requests (name, body bytes, arrival s) wait for `tickets` busy tickets, freed one at a time
    at `frees` s; returns the names in the order they got one."""
    async def run():
        pool = native.Pool(1, MODEL, [], ["sock"] * tickets, [])
        upstream = native.Upstream("key", pool, short_first_wait_s=short_first_wait_s)
        order = []

        async def request(name, size, at):
            await asyncio.sleep(at)
            await upstream.take(size)
            order.append(name)

        waiting = [asyncio.ensure_future(request(*arrival)) for arrival in arrivals]
        for at in frees:
            await asyncio.sleep(at)
            upstream.give(pool, "sock")
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        return order

    return asyncio.run(run())


def test_without_short_first_tickets_go_first_come_first_served():
    arrivals = [("long", 9000, 0.0), ("short", 20, 0.01), ("medium", 400, 0.02)]
    assert _ticket_order(0, arrivals, [0.2, 0.01, 0.01]) == ["long", "short", "medium"]


def test_short_requests_take_a_free_ticket_before_longer_ones():
    arrivals = [("long", 9000, 0.0), ("short", 20, 0.01), ("medium", 400, 0.02)]
    assert _ticket_order(30, arrivals, [0.2, 0.01, 0.01]) == ["short", "medium", "long"]


def test_a_long_request_waits_at_most_short_first_wait_s_behind_shorter_ones(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(native, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    async def run():
        pool = native.Pool(1, MODEL, [], ["sock"], [])
        upstream = native.Upstream("key", pool, short_first_wait_s=20)
        order = []

        async def arrive(name, size, at):
            clock[0] = at
            task = asyncio.ensure_future(upstream.take(size))
            task.add_done_callback(lambda _: order.append(name))
            await asyncio.sleep(0)
            return task

        async def free_at(at):
            clock[0] = at
            upstream.give(pool, "sock")
            await asyncio.sleep(0)

        tasks = [await arrive("long", 9000, 0), await arrive("short-1", 20, 1), await arrive("short-2", 20, 2)]
        await free_at(3)  # short-1: the long one has waited 3 s of its 20
        tasks.append(await arrive("short-3", 20, 4))
        await free_at(5)  # short-2
        tasks.append(await arrive("short-4", 10, 21))
        await free_at(21)  # the long one, 21 s in: before short-3 (17 s) and the smaller short-4
        await free_at(22)  # short-4, smaller than short-3
        await free_at(23)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(run()) == ["short-1", "short-2", "long", "short-4", "short-3"]


def test_a_request_granted_as_its_client_leaves_hands_the_ticket_on():
    async def run():
        pool = native.Pool(1, MODEL, [], ["sock"], [])
        upstream = native.Upstream("key", pool, short_first_wait_s=20)
        first = asyncio.ensure_future(upstream.take(10))
        second = asyncio.ensure_future(upstream.take(20))
        await asyncio.sleep(0)
        upstream.give(pool, "sock")  # granted to the first...
        first.cancel()  # ...which leaves before it runs again
        taken = await asyncio.wait_for(second, 5)
        return first.cancelled(), taken, pool.free, upstream._queue

    cancelled, taken, free, queue = asyncio.run(run())
    assert cancelled and taken[1] == "sock" and free == [] and queue == []


def test_tickets_freed_together_reach_as_many_waiters_and_a_leaver_holds_none():
    async def run():
        pool = native.Pool(1, MODEL, [], ["sock"] * 3, [])
        upstream = native.Upstream("key", pool, short_first_wait_s=30)
        taken = []

        async def request(name, size):
            await upstream.take(size)
            taken.append(name)

        leaver = asyncio.ensure_future(request("leaver", 1))
        others = [asyncio.ensure_future(request(name, size)) for name, size in (("a", 10), ("b", 20), ("c", 30))]
        await asyncio.sleep(0.01)
        leaver.cancel()  # the client went away while it waited
        await asyncio.sleep(0.01)
        pool.free.extend(["sock", "sock"])
        upstream.give(pool, "sock")  # three tickets back at once
        await asyncio.wait_for(asyncio.gather(*others), 5)
        return taken, pool.free, upstream._queue

    taken, free, queue = asyncio.run(run())
    assert (taken, free, queue) == (["a", "b", "c"], [], [])
