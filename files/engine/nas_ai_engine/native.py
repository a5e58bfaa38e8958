"""The engine's front for child processes: llama.cpp's own `llama-server` (continuous batching
over parallel slots), or several llama-cpp-python workers. Children listen on sockets in the
unit's runtime directory; the front puts the same guard, health, warm-up and metrics before them
as before the in-process llama-cpp-python engine. If a child dies, the front exits and systemd
restarts the unit."""

import asyncio
import sys
import time

from nas_ai_engine import metrics, readiness, uds_http
from nas_ai_engine.guard import GUARDED_PATHS

# Hop-by-hop headers and those the ASGI server sets itself.
_NOT_FORWARDED = uds_http.HOP_BY_HOP | {b"host", b"date", b"server"}


# Longer than nginx's keepalive_timeout to its upstreams (60 s): the gateway, not the engine,
# closes idle connections, so nginx never sends a request on a connection being closed.
KEEP_ALIVE_S = 75


def command(config: dict) -> list[str]:
    """llama-server's arguments: one slot per concurrent request, each with the full context (the
    memory budget counted a KV cache of n_ctx per slot), on a socket only this unit can reach.
    The API key goes in its environment (LLAMA_API_KEY), not on a command line others can read."""
    model, native = config["model"], config["native"]
    threads = str(model["n_threads"])
    return [
        native["binary"], "--model", model["path"], "--alias", model["alias"], "--host", native["socket"],
        "--parallel", str(native["parallel"]), "--ctx-size", str(model["n_ctx"] * native["parallel"]),
        "--no-kv-unified", "--threads", threads, "--threads-batch", threads,
        "--batch-size", str(model["n_batch"]), "--metrics", "--no-webui",
        # /slots would show other users' prompts; the host-RAM prompt cache (8 GiB by default)
        # is outside the memory budget.
        "--no-slots", "--cache-ram", "0",
        # Weights stay mmap'd page cache, counted against the slice's MemoryMax (no mlock).
    ]


class Upstream:
    """ASGI app forwarding each request to a backend socket (llama-server's, or one per
    llama-cpp-python worker) and streaming its answer back as it comes. Generation requests take a
    ticket first: one per llama-server slot, one per worker. Those without a ticket wait here,
    which is where the queue wait is measured. A client that goes away cancels its request, which
    frees the slot at once."""

    def __init__(self, tickets: list[str], api_key: str):
        self.any_socket, self.api_key = tickets[0], api_key
        self.idle: asyncio.Queue = asyncio.Queue()
        for socket_path in tickets:
            self.idle.put_nowait(socket_path)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        # The guard's path, one of its allow-list, never the raw one: an encoded variant
        # (`/v1/chat%2Fcompletions`) could reach another handler of the engine.
        target = scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        request = (scope["method"], target, scope["headers"], b"".join(body))
        generation = scope["path"] in GUARDED_PATHS
        forward = asyncio.ensure_future(self._forward(request, send, generation))
        watch = asyncio.ensure_future(self._disconnected(receive))
        try:
            await asyncio.wait({forward, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not forward.done():
                forward.cancel()  # the client left: closing the connection stops the generation
            await asyncio.gather(forward, watch, return_exceptions=True)
        if forward.done() and not forward.cancelled() and forward.exception():
            raise forward.exception()

    @staticmethod
    async def _disconnected(receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _forward(self, request, send, generation: bool) -> None:
        socket_path = self.any_socket
        if generation:
            arrival = time.monotonic()
            metrics.WAITING.inc()
            try:
                socket_path = await self.idle.get()
            finally:
                metrics.WAITING.dec()
            metrics.QUEUE_WAIT.observe(time.monotonic() - arrival)
        try:
            answer = await uds_http.exchange(socket_path, *request)
            try:
                await send({"type": "http.response.start", "status": answer.status,
                            "headers": [(name.lower(), value) for name, value in answer.headers
                                        if name.lower() not in _NOT_FORWARDED]})
                async for piece in answer.chunks():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                answer.close()
        finally:
            if generation:
                self.idle.put_nowait(socket_path)

    async def metrics_text(self) -> bytes:
        """llama-server's own counters (llamacpp:*), appended to this engine's /metrics."""
        try:
            status, body = await uds_http.fetch(self.any_socket, "GET", "/metrics", _bearer(self.api_key), timeout=5.0)
        except uds_http.UNREACHABLE:
            return b""
        return body if status == 200 else b""


def _bearer(api_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + api_key.encode())]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the front dies, however it dies (uvicorn re-raises
    SIGTERM after its shutdown, so the front may end before it can stop its children, and on
    cgroup v1 systemd may not find them)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def _spawn(*command: str, env: dict | None = None):
    return await asyncio.create_subprocess_exec(*command, env=env, preexec_fn=_die_with_parent)


async def _until_ready(socket_path: str, child, path: str, api_key: str, deadline: float) -> None:
    async def answers() -> bool:
        if child.returncode is not None:
            sys.exit(f"nas_ai_engine: a child exited with {child.returncode} while loading")
        try:
            status, _ = await uds_http.fetch(socket_path, "GET", path, _bearer(api_key), timeout=5.0)
        except uds_http.UNREACHABLE:
            return False  # not listening yet, or loading
        return status == 200

    if not await readiness.ready_within_async(answers, deadline - time.monotonic(), interval=0.2):
        sys.exit("nas_ai_engine: the engine did not load its model in time")


async def _front(config: dict, guard_factory, children: list, upstream: "Upstream", extra_metrics=None) -> None:
    """Serve the guard over the upstream until a signal, or until a child dies (then exit 1 so
    systemd restarts the whole unit)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(guard_factory(upstream, extra_metrics), host=config["host"],
                                           port=config["port"], log_level="warning", access_log=False,
                                           timeout_keep_alive=KEEP_ALIVE_S))
    serving = asyncio.ensure_future(server.serve())
    exits = [asyncio.ensure_future(child.wait()) for child in children]
    done, _ = await asyncio.wait({serving, *exits}, return_when=asyncio.FIRST_COMPLETED)
    for waiting in exits:
        waiting.cancel()
    if serving not in done:
        server.should_exit = True
        await serving
        sys.exit(f"nas_ai_engine: a child exited with {[c.returncode for c in children]}")


async def _stop(children: list) -> None:
    for child in children:
        if child.returncode is None:
            child.terminate()
    for child in children:
        await child.wait()


async def serve(config: dict, guard_factory) -> None:
    """llama-server as this process's child, behind the guard."""
    import json
    import os

    native, model = config["native"], config["model"]
    socket_path, key = native["socket"], config["api_key"]
    child = await _spawn(*command(config), env=dict(os.environ, LLAMA_API_KEY=key))
    try:
        deadline = time.monotonic() + config.get("ready_timeout_s", 300)
        await _until_ready(socket_path, child, "/health", key, deadline)
        # Warm-up before the port opens: the first request does not pay for page-ins and graph setup.
        started = time.monotonic()
        status, answer = await uds_http.fetch(
            socket_path, "POST", "/v1/completions", _bearer(key) + [(b"content-type", b"application/json")],
            json.dumps({"prompt": "Hello", "max_tokens": 1}).encode())
        if status != 200:
            sys.exit(f"nas_ai_engine: llama-server's warm-up answered {status}: {answer[:500]!r}")
        print(f"nas_ai_engine: llama-server with {native['parallel']} slots, model {model['alias']} "
              f"({model['sha256'][:12]}) warm in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        upstream = Upstream([socket_path] * native["parallel"], key)
        await _front(config, guard_factory, [child], upstream, upstream.metrics_text)
    finally:
        await _stop([child])


def worker_socket(config: dict, index: int) -> str:
    return str(config["native"]["socket"]).replace("llama-server.sock", f"worker-{index}.sock")


async def serve_workers(config: dict, guard_factory) -> None:
    """llama-cpp-python serves one request at a time per process: several worker processes (the
    model's pages shared through mmap), each taking one request at a time from this front."""
    workers = config["workers"]
    children = [await _spawn(sys.executable, "-m", "nas_ai_engine", "worker", "--config", config["config_path"],
                             "--index", str(index)) for index in range(workers)]
    sockets = [worker_socket(config, index) for index in range(workers)]
    try:
        deadline = time.monotonic() + config.get("ready_timeout_s", 300)
        for child, socket_path in zip(children, sockets):
            await _until_ready(socket_path, child, "/v1/models", config["api_key"], deadline)
        print(f"nas_ai_engine: {workers} llama-cpp-python workers ready", file=sys.stderr, flush=True)
        await _front(config, guard_factory, children, Upstream(sockets, config["api_key"]))
    finally:
        await _stop(children)


def smoke(binary: str, model_path: str, timeout: float = 900) -> None:
    """A real inference with this build's llama-server, on a free loopback port."""
    import json
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = subprocess.Popen([binary, "--model", model_path, "--host", "127.0.0.1", "--port", str(port),
                              "--ctx-size", "256", "--threads", "1", "--no-webui"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def loaded() -> bool:
            if child.poll() is not None:
                sys.exit(f"nas_ai_engine: llama-server exited with {child.returncode}: {child.stderr.read()[-2000:]}")
            return readiness.answers_200(f"http://127.0.0.1:{port}/health")

        if not readiness.ready_within(loaded, timeout, interval=0.2):
            sys.exit("nas_ai_engine: llama-server did not load the model in time")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}).encode())
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.load(response)
        if answer["usage"]["completion_tokens"] < 1:
            sys.exit("nas_ai_engine: llama-server's smoke inference produced no token")
        print(f"nas_ai_engine: llama-server smoke inference ok: {answer['choices'][0]['text']!r}")
    finally:
        child.terminate()
        child.wait(timeout=30)
