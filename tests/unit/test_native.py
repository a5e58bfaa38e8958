"""llama-server's command line, as the engine process starts it."""

from nas_ai_engine import native

CONFIG = {
    "api_key": "backend-secret-key",
    "model": {"path": "/data/models/m/current", "alias": "m", "sha256": "0" * 64, "n_ctx": 2048,
              "n_batch": 512, "n_threads": 3},
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


def test_every_slot_gets_the_full_context_on_a_private_socket():
    command = native.command(CONFIG)
    options = _options(command)
    assert command[0] == CONFIG["native"]["binary"]
    assert options["--host"] == "/run/nas-ai-engine/llama-server.sock"
    assert options["--parallel"] == "4" and options["--ctx-size"] == str(4 * 2048)
    assert "--no-kv-unified" in options  # n_ctx per slot, as the memory budget counted
    assert options["--threads"] == options["--threads-batch"] == "3"


def test_no_secret_on_the_command_line_and_nothing_outside_the_budget():
    command = native.command(CONFIG)
    options = _options(command)
    assert CONFIG["api_key"] not in " ".join(command)  # passed as LLAMA_API_KEY instead
    assert options["--cache-ram"] == "0" and "--no-slots" in options and "--no-webui" in options


def test_requests_beyond_the_tickets_wait_in_the_front_and_that_wait_is_measured():
    import asyncio
    import time

    import httpx

    from nas_ai_engine import metrics

    busy = {"now": 0, "most": 0}

    async def backend(scope, receive, send):  # one slot's worth of work: 0.2 s
        await receive()
        busy["now"] += 1
        busy["most"] = max(busy["most"], busy["now"])
        await asyncio.sleep(0.2)
        busy["now"] -= 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    def sample(name):
        return metrics.REGISTRY.get_sample_value(name) or 0

    async def three_requests():
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=backend), base_url="http://llama-server")
        upstream = native.Upstream([client, client], "key")
        statuses = []

        async def one():
            sent = []

            async def receive():
                await asyncio.sleep(5)  # the client stays connected
                return {"type": "http.disconnect"}

            async def first_receive():
                first_receive.calls += 1
                if first_receive.calls == 1:
                    return {"type": "http.request", "body": b'{"prompt": "x"}', "more_body": False}
                return await receive()
            first_receive.calls = 0

            async def send(message):
                sent.append(message)

            await upstream({"type": "http", "method": "POST", "path": "/v1/completions", "headers": [],
                            "query_string": b""}, first_receive, send)
            statuses.append(sent[0]["status"])

        await asyncio.gather(one(), one(), one())
        await client.aclose()
        return statuses

    before = (sample("nas_ai_engine_queue_wait_seconds_count"), sample("nas_ai_engine_queue_wait_seconds_sum"))
    started = time.monotonic()
    assert asyncio.run(three_requests()) == [200, 200, 200]
    elapsed = time.monotonic() - started
    assert busy["most"] == 2 and 0.38 < elapsed < 1.5  # two at once, the third after them
    assert sample("nas_ai_engine_queue_wait_seconds_count") - before[0] == 3
    assert sample("nas_ai_engine_queue_wait_seconds_sum") - before[1] >= 0.18  # the third waited ~0.2 s
