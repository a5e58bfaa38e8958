"""The engine's front for child processes: llama.cpp's own `llama-server` (continuous batching
over parallel slots), or several llama-cpp-python workers. Children listen on sockets in the
unit's runtime directory; the front puts the guard, health, probe and metrics before them.

Children come in pools, one pool per model generation. A reload (`systemctl reload`, SIGUSR1)
starts a pool on the model that model.json now names and probes it before any client request
reaches it; then new requests take the new pool's tickets while the old pool drains and stops
(blue/green), or, when the memory budget holds one pool alone, they wait in the front while the
old pool drains, stops and the new one loads (queue). A probe that fails leaves the old model
serving. Within the rollback window, a new pool that crashes or answers too many 5xx is replaced
by the previous model, and the front remembers that across restarts (rollback.json)."""

import asyncio
import collections
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nas_ai_engine import metrics, readiness, slots, uds_http
from nas_ai_engine.guard import GUARDED_PATHS

# Hop-by-hop headers and those the ASGI server sets itself.
_NOT_FORWARDED = uds_http.HOP_BY_HOP | {b"host", b"date", b"server"}
# The gateway's name for a request's conversation (its client and session), set by the gateway alone.
SESSION_HEADER = b"x-nas-ai-session"

# Longer than the gap between Prometheus's scrapes (15 s by default), which keeps its connection:
# the engine does not close it under a scrape. The gateway opens a connection per request.
KEEP_ALIVE_S = 75
# The probe's completion: greedy, fixed seed, end of text ignored where the engine allows it, so
# every model writes the same number of tokens and its decode speed is comparable.
PROBE_PROMPT = "Tell me about home NAS storage."
PROBE_TOKENS = 16
SWAP_RESULTS = ("ok", "probe_failed", "rolled_back")
# asyncio's own timeout is another class than the builtin before Python 3.11 (Ubuntu 22.04's 3.10).
TIMEOUTS = (TimeoutError, asyncio.TimeoutError)
TAIL_LINES = 40
STOP_GRACE_S = 10
# A live child that answers no health check for LIVENESS_STRIKES checks in a row is hung (stopped,
# deadlocked): it is killed like a crash. The front tells systemd's watchdog it is alive only
# while its children are, so a hung front is restarted too (WatchdogSec in the unit).
LIVENESS_INTERVAL_S = 5.0
LIVENESS_STRIKES = 3


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
        # /slots would show other users' prompts. The host-RAM prompt cache (8 GiB by default) is
        # the size the memory budget counted.
        "--no-slots", "--cache-ram", str(native.get("prompt_cache_mib", 0)),
        # Weights stay mmap'd page cache, counted against the slice's MemoryMax (no mlock).
    ]


def with_model(config: dict, model: dict, socket_path: str | None = None) -> dict:
    """The engine's config with one model's path, alias and slots in it (and a socket of its own):
    llama-server's slots are what the memory budget holds for that model."""
    native = dict(config["native"], parallel=model.get("parallel", config["native"].get("parallel")))
    if socket_path:
        native["socket"] = socket_path
    return dict(config, model=dict(config["model"], path=model["path"], alias=model["alias"]), native=native)


class SwapFailed(Exception):
    """A new pool failed to load or failed a check of its probe: `check` names which."""

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


@dataclass(eq=False)
class Pool:
    """The children serving one model. Its tickets (one per llama-server slot, one per worker) are
    what a generation request takes to reach them."""
    generation: int
    model: dict
    children: list
    sockets: list[str]
    free: list[str]
    size: int = 0
    speed: float | None = None  # decode tokens/s its probe measured
    outcomes: collections.deque = field(default_factory=collections.deque)  # failed or not, newest last
    slot_memory: slots.Slots | None = None  # llama-server's: what each slot holds, for the front's choice

    def __post_init__(self):
        self.size = len(self.free)


@dataclass(eq=False)
class _Waiting:
    """A generation request waiting for a ticket; `granted` gets (pool, ticket)."""
    size: int
    since: float
    granted: asyncio.Future
    placement: slots.Placement | None = None


class Upstream:
    """ASGI app forwarding each request to the live pool's children and streaming their answer back
    as it comes. Generation requests take a ticket first; those without one wait here, which is
    where the queue wait is measured, and where they wait while a model is swapped. A client that
    goes away cancels its request, which frees the slot at once."""

    def __init__(self, api_key: str, pool: Pool | None = None, short_first_wait_s: float = 0):
        self.api_key, self.pool = api_key, pool
        self.short_first_wait_s = short_first_wait_s
        self._waiters: list[asyncio.Future] = []
        self._queue: list[_Waiting] = []  # generation requests waiting for a ticket
        self.on_outcome = None  # (pool, failed) after each generation request the engine answered

    def switch(self, pool: Pool | None) -> None:
        """New requests go to `pool` (None: they wait until a pool is switched in)."""
        self.pool = pool
        self._dispatch()
        self._wake()

    def give(self, pool: Pool, ticket: str) -> None:
        pool.free.append(ticket)
        self._dispatch()
        self._wake()

    async def take(self, size: int = 0, placement: slots.Placement | None = None) -> tuple[Pool, str | slots.Slot]:
        """A ticket of the live pool. With short_first_wait_s, the smallest request (its body's
        bytes: the prompt, mostly) goes first, but one that has waited that long goes before any
        that has not, the oldest first: a long prompt waits at most that long behind short ones.
        Without it (0), first come, first served."""
        entry = _Waiting(size, time.monotonic(), asyncio.get_running_loop().create_future(), placement)
        self._queue.append(entry)
        self._dispatch()
        try:
            return await entry.granted
        except BaseException:  # cancelled (the client left)
            if entry in self._queue:
                self._queue.remove(entry)
            elif entry.granted.done() and not entry.granted.cancelled():
                self.give(*entry.granted.result())  # granted as it left: the next in line gets it
            raise

    def _dispatch(self) -> None:
        """Hand the live pool's free tickets to the requests next in line. The one place that
        decides, with one clock reading: a decision spread over the waiters could leave a ticket
        free while each thought another was next."""
        pool, now = self.pool, time.monotonic()
        # A request cancelled a moment ago (its future too) leaves the queue in its own time.
        self._queue = [waiting for waiting in self._queue if not waiting.granted.done()]
        while pool is not None and pool.free and self._queue:
            if self.short_first_wait_s:
                entry = min(self._queue, key=lambda waiting: (0, waiting.since, 0)
                            if now - waiting.since >= self.short_first_wait_s else (1, waiting.size, waiting.since))
            else:
                entry = self._queue[0]
            self._queue.remove(entry)
            if pool.slot_memory is not None and entry.placement is not None:
                ticket = pool.slot_memory.choose(pool.free, entry.placement)
                pool.free.remove(ticket)
            else:
                ticket = pool.free.pop(0)
            entry.granted.set_result((pool, ticket))

    async def live(self) -> Pool:
        while self.pool is None:
            await self._changed()
        return self.pool

    async def drained(self, pool: Pool) -> None:
        """Until every ticket of `pool` is back: its requests in flight have ended."""
        while len(pool.free) < pool.size:
            await self._changed()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

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
        # The guard's parse of the body: the front places it in a slot of llama-server's.
        parsed = scope.get("nas_ai_request") if generation else None
        forward = asyncio.ensure_future(self._forward(request, send, generation, parsed))
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

    async def _forward(self, request, send, generation: bool, parsed: dict | None = None) -> None:
        if generation:
            arrival = time.monotonic()
            metrics.WAITING.inc()
            placement = None
            if parsed is not None:
                session = dict(request[2]).get(SESSION_HEADER, b"").decode("latin-1")
                placement = slots.placement_of(parsed, len(request[3]), session)
            try:
                pool, ticket = await self.take(len(request[3]), placement)
            finally:
                metrics.WAITING.dec()
            metrics.QUEUE_WAIT.observe(time.monotonic() - arrival)
        else:
            pool = await self.live()
            ticket = pool.sockets[0]
        socket_path = ticket
        if isinstance(ticket, slots.Slot):
            socket_path = ticket.socket
            if parsed is not None:  # the slot the front chose, whatever the client asked for
                method, target, headers, _ = request
                request = (method, target, headers, json.dumps(dict(parsed, id_slot=ticket.index)).encode())
        failed: bool | None = True
        try:
            try:
                answer = await uds_http.exchange(socket_path, *request)
            except uds_http.UNREACHABLE as error:
                # Nothing sent yet: a 503 the gateway passes to another engine (a child that just
                # died or hung, before the front restarts).
                return await _unavailable(send, error)
            try:
                await send({"type": "http.response.start", "status": answer.status,
                            "headers": [(name.lower(), value) for name, value in answer.headers
                                        if name.lower() not in _NOT_FORWARDED]})
                async for piece in answer.chunks():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                failed = answer.status >= 500
            finally:
                answer.close()
        except asyncio.CancelledError:
            failed = None  # the client left: no verdict on the engine
            raise
        finally:
            if generation:
                self.give(pool, ticket)
                if failed is not None and self.on_outcome is not None:
                    self.on_outcome(pool, failed)

    async def metrics_text(self) -> bytes:
        """llama-server's own counters (llamacpp:*), appended to this engine's /metrics."""
        pool = self.pool
        if pool is None:
            return b""
        try:
            status, body = await uds_http.fetch(pool.sockets[0], "GET", "/metrics", _bearer(self.api_key),
                                                timeout=5.0)
        except uds_http.UNREACHABLE:
            return b""
        return body if status == 200 else b""


async def _unavailable(send, error: Exception) -> None:
    body = json.dumps({"error": {"message": f"the engine is unavailable ({type(error).__name__}); retry",
                                 "type": "server_error", "param": None, "code": "engine_unavailable"}}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _bearer(api_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + api_key.encode())]


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the front dies, however it dies (uvicorn re-raises
    SIGTERM after its shutdown, so the front may end before it can stop its children, and on
    cgroup v1 systemd may not find them). A child holds nothing worth a graceful end: its
    requests went with the front."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def _spawn(*command: str, env: dict | None = None):
    """A child whose error output goes on to the journal, its last lines kept (`child.tail`) for
    the message of a failed load."""
    child = await asyncio.create_subprocess_exec(*command, env=env, preexec_fn=_die_with_parent,
                                                 stderr=asyncio.subprocess.PIPE)
    child.tail = collections.deque(maxlen=TAIL_LINES)
    child.relay = asyncio.ensure_future(_relay(child))
    return child


async def _relay(child) -> None:
    """The child's error output on to the journal as it comes, in chunks (a line longer than a
    reader's limit must not stop the relay and leave the child blocked on a full pipe)."""
    partial = b""
    while chunk := await child.stderr.read(1 << 16):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        *lines, partial = (partial + chunk).split(b"\n")
        partial = partial[-4096:]
        child.tail.extend(line.decode(errors="replace").strip() for line in lines)
    if partial:
        child.tail.append(partial.decode(errors="replace").strip())


def _why(child) -> str:
    """llama.cpp's own reason for a failed load, from the child's last lines."""
    tail = list(child.tail)
    for line in tail:
        if "error loading model:" in line:  # llama.cpp's reason (truncated file, unknown architecture, ...)
            return line.split("error loading model:", 1)[1].strip()[:600]
    lines = [line for line in tail if "error" in line.lower() or "failed" in line.lower()] or tail
    return "; ".join(lines[-3:])[-600:]


async def _until_ready(socket_path: str, child, path: str, api_key: str, deadline: float) -> None:
    async def answers() -> bool:
        if child.returncode is not None:
            await asyncio.wait([child.relay], timeout=5)  # its last lines
            raise SwapFailed("load", f"the engine exited with {child.returncode} while loading the model: "
                                     f"{_why(child)} (the sha256 pins the file, not that it is whole or of an "
                                     "architecture this llama.cpp knows: check the source file)")
        try:
            status, _ = await uds_http.fetch(socket_path, "GET", path, _bearer(api_key), timeout=5.0)
        except uds_http.UNREACHABLE:
            return False  # not listening yet, or loading
        return status == 200

    if not await readiness.ready_within_async(answers, deadline - time.monotonic(), interval=0.2):
        raise SwapFailed("load", "the engine did not load the model in time")


def runtime_dir(config: dict) -> Path:
    return Path(config["native"]["socket"]).parent


async def start_pool(config: dict, model: dict, generation: int) -> Pool:
    """Children on `model`, each on a socket of its own generation, ready to answer."""
    key, run = config["api_key"], runtime_dir(config)
    if config["server"] == "llama-server":
        socket_path = str(run / f"llama-server-{generation}.sock")
        configured = with_model(config, model, socket_path)
        children = [await _spawn(*command(configured), env=dict(os.environ, LLAMA_API_KEY=key))]
        parallel, slot_memory = configured["native"]["parallel"], None
        if config.get("slot_placement"):
            tickets = [slots.Slot(socket_path, index) for index in range(parallel)]
            # A prompt longer than one batch is read over several steps: one that holds the others up.
            slot_memory = slots.Slots(slots.CHARS_PER_TOKEN * configured["model"]["n_batch"], parallel)
        else:
            tickets = [socket_path] * parallel
        sockets, ready_path = [socket_path], "/health"
    else:  # llama-cpp-python serves one request at a time per process: one ticket per worker
        sockets = [str(run / f"worker-{generation}-{index}.sock") for index in range(config["workers"])]
        children = [await _spawn(sys.executable, "-m", "nas_ai_engine", "worker", "--config", config["config_path"],
                                 "--index", str(index), "--model", model["path"], "--alias", model["alias"],
                                 "--socket", socket_path) for index, socket_path in enumerate(sockets)]
        tickets, ready_path, slot_memory = list(sockets), "/v1/models", None
    pool = Pool(generation, model, children, sockets, tickets, slot_memory=slot_memory)
    try:
        deadline = time.monotonic() + config.get("ready_timeout_s", 300)
        for child, socket_path in zip(children, sockets):
            await _until_ready(socket_path, child, ready_path, key, deadline)
    except BaseException:
        await stop_pool(pool)
        raise
    return pool


async def stop_pool(pool: Pool) -> None:
    """Its requests have ended (drained) or failed: SIGTERM, and SIGKILL for a child still there
    after STOP_GRACE_S (a llama-server was seen hung in its exit, which held the unit's stop)."""
    for child in pool.children:
        if child.returncode is None:
            child.terminate()
    for child in pool.children:
        try:
            await asyncio.wait_for(child.wait(), STOP_GRACE_S)
        except TIMEOUTS:
            child.kill()
            await child.wait()
        await asyncio.wait([child.relay], timeout=5)
    for socket_path in pool.sockets:
        Path(socket_path).unlink(missing_ok=True)


async def _ask(socket_path: str, check: str, what: str, timeout: float, *request) -> tuple[int, dict]:
    """One exchange of the probe: (status, JSON answer), or SwapFailed naming `check`."""
    body = b""
    try:
        status, body = await uds_http.fetch(socket_path, *request, timeout=timeout)
        return status, json.loads(body) if status == 200 else {}
    except TIMEOUTS:
        raise SwapFailed(check, f"no answer to {what} within {timeout:.0f} s") from None
    except (uds_http.BackendError, OSError) as error:
        raise SwapFailed(check, f"the engine failed while answering {what}: {error}") from None
    except ValueError:
        raise SwapFailed(check, f"the engine answered {what} with something that is not JSON: {body[:200]!r}") from None


async def probe(config: dict, pool: Pool, reference: Pool | None) -> None:
    """Before a client request reaches the pool: it serves the expected file, writes tokens of a
    greedy completion within the bound, and decodes at least a share of the reference model's
    speed scaled by the ratio of their sizes (weights are read once per token). Raises SwapFailed."""
    model, socket_path, key = pool.model, pool.sockets[0], config["api_key"]
    request = {"prompt": PROBE_PROMPT, "max_tokens": PROBE_TOKENS, "temperature": 0, "seed": 42}
    if config["server"] == "llama-server":
        status, props = await _ask(socket_path, "identity", "/props", 10.0, "GET", "/props", _bearer(key))
        loaded = props.get("model_path") if status == 200 else f"(/props answered {status})"
        request["ignore_eos"] = True
    else:
        status, listed = await _ask(socket_path, "identity", "/v1/models", 10.0, "GET", "/v1/models", _bearer(key))
        names = [entry.get("id") for entry in listed.get("data", [])]
        loaded = model["path"] if model["alias"] in names else f"models {names} (/v1/models answered {status})"
    if loaded != model["path"]:
        raise SwapFailed("identity", f"the engine serves {loaded}, not {model['path']}")
    started = time.monotonic()
    status, answer = await _ask(socket_path, "completion", f"a {PROBE_TOKENS}-token completion",
                                config["probe"]["timeout_s"], "POST", "/v1/completions",
                                _bearer(key) + [(b"content-type", b"application/json")], json.dumps(request).encode())
    elapsed = time.monotonic() - started
    if status != 200:
        raise SwapFailed("completion", f"the completion answered {status}")
    tokens = (answer.get("usage") or {}).get("completion_tokens", 0)
    if tokens < 1:
        raise SwapFailed("completion", "the completion wrote no token")
    speed = (answer.get("timings") or {}).get("predicted_per_second") or tokens / elapsed
    if reference is not None and reference.speed:
        share = config["probe"]["min_speed_share"]
        floor = share * reference.speed * reference.model["size"] / model["size"]
        if speed < floor:
            raise SwapFailed("speed", f"decodes {speed:.1f} tokens/s, below {floor:.1f} ({share:g} x "
                                      f"{reference.speed:.1f} tokens/s of {reference.model['alias']} x its size "
                                      f"ratio {reference.model['size'] / model['size']:.2f})")
    pool.speed = speed


async def _alive(config: dict, pool: Pool) -> bool:
    """llama-server answers /health (its HTTP threads are not its slots); a llama-cpp-python worker
    answers nothing while it generates, so its process must merely not be stopped or dead."""
    if config["server"] == "llama-server":
        try:
            status, _ = await uds_http.fetch(pool.sockets[0], "GET", "/health", [], timeout=LIVENESS_INTERVAL_S)
        except uds_http.UNREACHABLE:
            return False
        return status == 200
    return all(_running(child.pid) for child in pool.children)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("T", "t", "Z", "X")


def _notify(message: bytes) -> None:
    """sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET, when systemd gave one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.connect(address)
            notify.sendall(message)
    except OSError:
        pass  # systemd gone or restarting: the next beat tries again


def _write_json(path: Path, payload: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    partial.replace(path)


class Supervisor:
    """Starts the first pool, swaps pools on reload, rolls back within the window, and reports
    each swap in swap.json (runtime directory) for `nas_ai_engine reload`, which systemd runs."""

    def __init__(self, config: dict, upstream: Upstream, health: dict):
        self.config, self.upstream, self.health = config, upstream, health
        self.swap_file = runtime_dir(config) / "swap.json"
        self.rollback_file = Path(config["state_dir"]) / "rollback.json"
        self.live: Pool | None = None
        self.previous: Pool | None = None  # the model before the last swap, while its window is open
        self.swapped_at = 0.0
        self.retiring: set[Pool] = set()
        self.generation = 0
        self.received = self.handled = 0
        self.reload_requested, self.rollback_requested = asyncio.Event(), asyncio.Event()
        self.rollback_reason = ""
        self.report = {"result": "starting"}
        upstream.on_outcome = self._outcome
        for result in SWAP_RESULTS:
            metrics.SWAPS.labels(result)

    # -- what to serve
    def wanted(self, at_start: bool) -> dict:
        with open(self.config["model_config"]) as model_file:
            model = json.load(model_file)
        if at_start and self.rollback_file.exists():
            rollback = json.loads(self.rollback_file.read_text())
            if rollback["from"]["sha256"] == model["sha256"]:
                self._log(f"model {model['alias']} ({model['sha256'][:12]}) was rolled back at "
                          f"{rollback['at']}: {rollback['reason']}; serving {rollback['to']['alias']} "
                          f"({rollback['to']['sha256'][:12]})")
                return rollback["to"]
        return model

    def signalled(self) -> None:
        """SIGUSR1: noted at once (the reload command waits for a swap handled after it)."""
        self.received += 1
        self._publish()
        self.reload_requested.set()

    def _publish(self) -> None:
        _write_json(self.swap_file, dict(self.report, received=self.received, handled=self.handled))

    def _record(self, result: str, message: str, **figures) -> None:
        if result in SWAP_RESULTS:
            metrics.SWAPS.labels(result).inc()
        live = self.live.model if self.live else {}
        self.report = {"result": result, "message": message, "alias": live.get("alias"),
                       "sha256": live.get("sha256"), **{k: round(v, 2) for k, v in figures.items()}}
        self._publish()
        self._log(f"swap {result}: {message}" + "".join(f", {k} {v:.1f}" for k, v in figures.items()))

    @staticmethod
    def _log(line: str) -> None:
        print(f"nas_ai_engine: {line}", file=sys.stderr, flush=True)

    def _next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def _go_live(self, pool: Pool) -> None:
        # A rollback asked for while another pool was live is not about this one.
        self.rollback_requested.clear()
        self.live = pool
        self.upstream.switch(pool)
        self.health.update(model=pool.model["alias"], sha256=pool.model["sha256"])
        metrics.MODEL.info({"model": pool.model["alias"], "sha256": pool.model["sha256"],
                            "server": self.config["server"]})

    # -- life cycle
    async def start(self) -> None:
        started = time.monotonic()
        model = self.wanted(at_start=True)
        pool = await start_pool(self.config, model, self._next_generation())
        try:
            await probe(self.config, pool, None)
        except SwapFailed:
            await stop_pool(pool)
            raise
        self._go_live(pool)
        self._record("started", f"{model['alias']} ({model['sha256'][:12]}) on {self.config['server']}, "
                                f"{pool.size} tickets, {pool.speed:.1f} tokens/s",
                     seconds=time.monotonic() - started)

    async def watch(self, serving: asyncio.Future) -> str | None:
        """Until the server ends (None) or a live child dies outside the rollback window (why)."""
        while True:
            exits = {asyncio.ensure_future(child.wait()) for child in self.live.children}
            reload = asyncio.ensure_future(self.reload_requested.wait())
            rollback = asyncio.ensure_future(self.rollback_requested.wait())
            done, pending = await asyncio.wait({serving, reload, rollback, *exits},
                                               return_when=asyncio.FIRST_COMPLETED)
            for waiting in pending - {serving}:
                waiting.cancel()
            if serving in done:
                return None
            if exits & done:
                codes = [child.returncode for child in self.live.children]
                if not self._window_open():
                    return f"a child exited with {codes}"
                self.rollback_reason = f"the engine exited with {codes}"
                self.rollback_requested.set()
            if self.rollback_requested.is_set():
                self.rollback_requested.clear()
                if self._window_open():
                    await self._roll_back(self.rollback_reason)
                continue
            if reload in done:
                self.reload_requested.clear()
                await self._reload()

    def _window_open(self) -> bool:
        return self.previous is not None and \
            time.monotonic() - self.swapped_at < self.config["rollback"]["window_s"]

    def _outcome(self, pool: Pool, failed: bool) -> None:
        """After each generation request: within the window, too many failures roll back."""
        if pool is not self.live or not self._window_open():
            return
        rules = self.config["rollback"]
        pool.outcomes.append(failed)
        while len(pool.outcomes) > rules["requests"]:
            pool.outcomes.popleft()
        failures = sum(pool.outcomes)
        if len(pool.outcomes) == rules["requests"] and failures >= rules["error_share"] * rules["requests"]:
            self.rollback_reason = f"{failures} of its last {rules['requests']} requests failed"
            self.rollback_requested.set()

    async def _reload(self) -> None:
        self.handled = self.received
        try:
            model = self.wanted(at_start=False)
            missing = [key for key in ("alias", "sha256", "path", "size") if key not in model]
            if missing:
                raise KeyError(", ".join(missing))
        except (OSError, ValueError, KeyError, TypeError) as error:
            return self._record("refused", f"cannot read {self.config['model_config']}: {error!r}")
        if model["sha256"] == self.live.model["sha256"]:
            self.rollback_file.unlink(missing_ok=True)  # asked for what serves: no rollback stands
            return self._record("unchanged", f"{model['alias']} ({model['sha256'][:12]}) serves already")
        old = self.live
        try:
            figures = await self._swap(model, model.get("swap", "blue-green"), reference=old)
        except SwapFailed as failure:
            return self._record("probe_failed", f"{model['alias']} ({model['sha256'][:12]}) failed its "
                                                f"{failure.check} check: {failure}; {old.model['alias']} "
                                                f"({old.model['sha256'][:12]}) serves on")
        self.previous, self.swapped_at = old, time.monotonic()
        self.rollback_file.unlink(missing_ok=True)
        self._record("ok", f"{old.model['alias']} ({old.model['sha256'][:12]}) -> {model['alias']} "
                           f"({model['sha256'][:12]}), {model.get('swap', 'blue-green')}, "
                           f"{self.live.speed:.1f} tokens/s", **figures)

    async def _swap(self, model: dict, mode: str, reference: Pool | None) -> dict:
        """Put a pool on `model` live; the old one drains and stops. Raises SwapFailed with the old
        pool serving (queue mode: started again)."""
        started, old = time.monotonic(), self.live
        figures = {}
        if mode == "queue" or not any(child.returncode is None for child in old.children):
            self.upstream.switch(None)  # new requests wait in the front
            try:
                await asyncio.wait_for(self.upstream.drained(old), self.config["probe"]["drain_timeout_s"])
            except TIMEOUTS:
                self.upstream.switch(old)
                raise SwapFailed("drain", f"requests on {old.model['alias']} still ran after "
                                          f"{self.config['probe']['drain_timeout_s']} s") from None
            await stop_pool(old)
            figures["drain_seconds"] = time.monotonic() - started
            old = None
        try:
            loading = time.monotonic()
            pool = await start_pool(self.config, model, self._next_generation())
            figures["load_seconds"] = time.monotonic() - loading
            try:
                probing = time.monotonic()
                await probe(self.config, pool, reference)
                figures["probe_seconds"] = time.monotonic() - probing
            except SwapFailed:
                await stop_pool(pool)
                raise
        except SwapFailed:
            if old is None:  # queue: the old model loads again
                restored = await start_pool(self.config, self.live.model, self._next_generation())
                restored.speed = self.live.speed
                self._go_live(restored)
            raise
        self._go_live(pool)
        figures["live_after_seconds"] = time.monotonic() - started
        if old is not None:
            self.retiring.add(old)
            asyncio.ensure_future(self._retire(old))
        return figures

    async def _retire(self, pool: Pool) -> None:
        started = time.monotonic()
        await self.upstream.drained(pool)
        await stop_pool(pool)
        self.retiring.discard(pool)
        self._log(f"{pool.model['alias']} ({pool.model['sha256'][:12]}) drained in "
                  f"{time.monotonic() - started:.1f} s and stopped")

    async def _roll_back(self, reason: str) -> None:
        bad, good = self.live, self.previous
        self.previous = None  # one rollback per swap
        _write_json(self.rollback_file, {"from": bad.model, "to": good.model, "reason": reason,
                                         "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        try:
            figures = await self._swap(good.model, bad.model.get("swap", "blue-green"), reference=None)
        except SwapFailed as failure:
            sys.exit(f"nas_ai_engine: rollback to {good.model['alias']} failed its {failure.check} check: {failure}")
        self._record("rolled_back", f"{bad.model['alias']} ({bad.model['sha256'][:12]}) -> {good.model['alias']} "
                                    f"({good.model['sha256'][:12]}) because {reason}", **figures)

    async def liveness(self) -> None:
        """Every LIVENESS_INTERVAL_S: the live pool answers, or after LIVENESS_STRIKES misses its
        children are killed (`watch` then rolls back within the window, or the unit restarts).
        systemd's watchdog is fed only while it answers, and while no pool is live yet."""
        strikes = 0
        while True:
            checked = time.monotonic()
            pool = self.live
            alive = pool is None or await _alive(self.config, pool)
            if alive or pool is not self.live:
                strikes = 0
                _notify(b"WATCHDOG=1")
            else:
                strikes += 1
                if strikes >= LIVENESS_STRIKES:
                    self._log(f"{pool.model['alias']} answered no health check for "
                              f"{strikes * LIVENESS_INTERVAL_S:.0f} s: killed as hung")
                    for child in pool.children:
                        if child.returncode is None:
                            child.kill()
                    strikes = 0
            # A check that timed out took the whole interval: LIVENESS_STRIKES misses take that many intervals.
            await asyncio.sleep(max(0.0, LIVENESS_INTERVAL_S - (time.monotonic() - checked)))

    async def stop(self) -> None:
        for pool in [self.live, *self.retiring]:
            if pool is not None:
                await stop_pool(pool)


async def serve(config: dict, guard_factory) -> None:
    """The children behind the guard, until a signal, or until a live child dies outside the
    rollback window (then exit 1 so systemd restarts the whole unit)."""
    import uvicorn

    health = {"status": "ok", "model": None, "sha256": None, "server": config["server"]}
    upstream = Upstream(config["api_key"], short_first_wait_s=config.get("short_first_wait_s", 0))
    supervisor = Supervisor(config, upstream, health)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, supervisor.signalled)
    # From the first moment: systemd arms the watchdog while the model still loads.
    liveness = asyncio.ensure_future(supervisor.liveness())
    try:
        try:
            await supervisor.start()
        except SwapFailed as failure:
            sys.exit(f"nas_ai_engine: the model failed its {failure.check} check: {failure}")
        extra = upstream.metrics_text if config["server"] == "llama-server" else None
        server = uvicorn.Server(uvicorn.Config(guard_factory(upstream, health, extra), host=config["host"],
                                               port=config["port"], log_level="warning", access_log=False,
                                               timeout_keep_alive=KEEP_ALIVE_S))
        serving = asyncio.ensure_future(server.serve())
        failure = await supervisor.watch(serving)
        if failure is not None:
            server.should_exit = True
            await serving
            sys.exit(f"nas_ai_engine: {failure}")
    finally:
        liveness.cancel()
        await supervisor.stop()


def request_reload(config: dict, pid: int, timeout: float) -> None:
    """`systemctl reload`: signal the front, then wait for its report of a swap handled after the
    signal; exit 1 with the report's message unless the new model serves (or served already)."""
    swap_file = runtime_dir(config) / "swap.json"

    def report() -> dict:
        try:
            return json.loads(swap_file.read_text())
        except (OSError, ValueError):
            return {}

    before = report().get("received", 0)
    os.kill(pid, signal.SIGUSR1)
    answered = readiness.ready_within(lambda: report().get("handled", 0) > before, timeout, interval=0.2)
    result = report()
    if not answered:
        sys.exit(f"nas_ai_engine reload: no swap report within {timeout:.0f} s")
    print(f"nas_ai_engine reload: {result['result']}: {result.get('message', '')}")
    if result["result"] not in ("ok", "unchanged"):
        sys.exit(1)


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
