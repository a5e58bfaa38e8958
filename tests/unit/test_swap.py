"""The model swap (native.py's Supervisor): a reload puts a probed pool live, blue/green or queued,
a failed probe leaves the old model serving, a crash or too many 5xx within the rollback window
bring the previous model back, and the rollback outlives a restart. Real child processes: a fake
llama-server (a Python script, below) whose behaviour its model file's JSON sets."""

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import time
import types

import pytest
from nas_ai_engine import metrics, native

KEY = "k" * 24

# llama-server's options (native.command), its HTTP/1.1 on the Unix socket --host, its key
# (LLAMA_API_KEY) on every path but /health. The model file's JSON says how it behaves: load_s
# (seconds before it listens), load_until (a file that must exist before it listens),
# crash_at_load, wrong_path (/props names another file), tokens, speed (tokens/s in its timings),
# delay (seconds per completion), fail_after (completions after the Nth answer 500), crash_after
# (exits on receiving the completion after the Nth). A request's
# "wait_for" holds its completion until that file exists. Each event goes to events.log next to
# the model file: "<pid> <model> launch|begin|end|stop|crash|exit".
FAKE_LLAMA_SERVER = r'''
import asyncio, json, os, signal, sys
from pathlib import Path

args = sys.argv[1:]
option = {word: args[i + 1] if i + 1 < len(args) else None for i, word in enumerate(args) if word.startswith("--")}
MODEL, SOCKET, KEY = option["--model"], option["--host"], os.environ["LLAMA_API_KEY"]
BEHAVIOUR, NAME = json.loads(Path(MODEL).read_text()), Path(MODEL).stem
served = 0


def log(event):
    with open(Path(MODEL).parent / "events.log", "a") as events:
        events.write(f"{os.getpid()} {NAME} {event}\n")


async def answer(writer, status, payload):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    writer.write(b"HTTP/1.1 %d -\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                 % (status, len(body), body))
    await writer.drain()


async def handle(reader, writer):
    global served
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    target = head[0].split(" ")[1]
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
    request = json.loads(await reader.readexactly(int(headers.get("content-length", 0))) or b"{}")
    try:
        if target == "/health":
            await answer(writer, 200, {"status": "ok"})
        elif headers.get("authorization") != "Bearer " + KEY:
            await answer(writer, 401, {"error": "wrong key"})
        elif target == "/props":
            await answer(writer, 200, {"model_path": "/models/other.gguf" if BEHAVIOUR.get("wrong_path") else MODEL})
        elif target == "/metrics":
            await answer(writer, 200, b"llamacpp:requests_processing 0\n")
        elif target == "/v1/completions":
            served += 1
            if served > BEHAVIOUR.get("crash_after", served):
                log("crash")
                os._exit(7)
            log("begin")
            await asyncio.sleep(BEHAVIOUR.get("delay", 0))
            while request.get("wait_for") and not os.path.exists(request["wait_for"]):
                await asyncio.sleep(0.02)
            if served > BEHAVIOUR.get("fail_after", served):
                await answer(writer, 500, {"error": "failing"})
            else:
                await answer(writer, 200, {"choices": [{"text": NAME}],
                                           "usage": {"completion_tokens": BEHAVIOUR.get("tokens", 24)},
                                           "timings": {"predicted_per_second": BEHAVIOUR.get("speed", 50)}})
            log("end")
        else:
            await answer(writer, 404, {"error": "not found"})
    finally:
        writer.close()


def stop():
    log("stop")
    os._exit(0)


async def main():
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    log("launch")
    await asyncio.sleep(BEHAVIOUR.get("load_s", 0))
    while BEHAVIOUR.get("load_until") and not os.path.exists(BEHAVIOUR["load_until"]):
        await asyncio.sleep(0.02)
    if BEHAVIOUR.get("crash_at_load"):
        log("exit")
        sys.exit(3)
    server = await asyncio.start_unix_server(handle, SOCKET)
    await server.serve_forever()


asyncio.run(main())
'''


class Rig:
    """A runtime directory, a state directory, model files and the engine's config."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        binary = tmp_path / "llama-server"
        binary.write_text(f"#!{sys.executable}\n{FAKE_LLAMA_SERVER}")
        binary.chmod(0o755)
        for name in ("run", "state", "models"):
            (tmp_path / name).mkdir()
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        self.config = {
            "server": "llama-server", "api_key": KEY, "host": "127.0.0.1", "port": port, "ready_timeout_s": 20,
            "native": {"binary": str(binary), "socket": str(tmp_path / "run" / "llama-server.sock"), "parallel": 2},
            "model": {"n_ctx": 256, "n_batch": 64, "n_threads": 1},
            "model_config": str(tmp_path / "model.json"), "state_dir": str(tmp_path / "state"),
            "probe": {"timeout_s": 5, "min_speed_share": 0.2, "drain_timeout_s": 30},
            "rollback": {"window_s": 60, "requests": 4, "error_share": 0.5},
        }

    def model(self, name: str, swap: str = "blue-green", size: int = 1000, **behaviour) -> dict:
        path = self.dir / "models" / f"{name}.gguf"
        path.write_text(json.dumps(behaviour))
        return {"alias": name, "sha256": hashlib.sha256(name.encode()).hexdigest(), "path": str(path),
                "size": size, "swap": swap}

    def choose(self, model: dict) -> None:
        (self.dir / "model.json").write_text(json.dumps(model))

    def events(self) -> list[tuple[int, str, str]]:
        log = self.dir / "models" / "events.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [(int(pid), name, event) for pid, name, event in (line.split() for line in lines)]

    def index(self, name: str, event: str, nth: int = 0) -> int:
        """Where the nth `event` of model `name` is in the log."""
        return [at for at, (_, model, what) in enumerate(self.events()) if (model, what) == (name, event)][nth]

    def count(self, name: str, event: str) -> int:
        return sum((model, what) == (name, event) for _, model, what in self.events())

    def report(self) -> dict:
        return json.loads((self.dir / "run" / "swap.json").read_text())

    def rollback(self) -> dict | None:
        path = self.dir / "state" / "rollback.json"
        return json.loads(path.read_text()) if path.exists() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def rig(tmp_path):
    """The rig; afterwards, no fake llama-server may still run (any left is killed, and fails the test)."""
    rig = Rig(tmp_path)
    yield rig
    left = sorted({pid for pid, _, _ in rig.events() if _alive(pid)})
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"children outlived the test: {left}"


def swaps(result: str) -> float:
    return metrics.REGISTRY.get_sample_value("nas_ai_engine_model_swaps_total", {"result": result}) or 0


def run(body):
    return asyncio.run(asyncio.wait_for(body, 90))


async def until(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def ask(upstream, **fields) -> tuple[int, str | None]:
    """One completion through the front's upstream, as the guard hands it over: (status, the text,
    which the fake sets to its model's name)."""
    body, sent, calls = json.dumps({"prompt": "hi", "max_tokens": 4, **fields}).encode(), [], {"n": 0}

    async def receive():
        calls["n"] += 1
        if calls["n"] == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client stays until its answer
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")]
    await upstream({"type": "http", "method": "POST", "path": "/v1/completions", "raw_path": b"/v1/completions",
                    "headers": headers, "query_string": b""}, receive, send)
    status = sent[0]["status"]
    answer = json.loads(b"".join(message.get("body", b"") for message in sent[1:]))
    return status, answer["choices"][0]["text"] if status == 200 else None


@contextlib.asynccontextmanager
async def supervising(rig: Rig):
    """The Supervisor as serve() runs it: started, then watching until the block ends; its pools
    stopped after."""
    upstream, health = native.Upstream(KEY), {}
    sup = native.Supervisor(rig.config, upstream, health)
    await sup.start()
    serving = asyncio.get_running_loop().create_future()
    watching = asyncio.ensure_future(sup.watch(serving))
    tasks = []

    def meanwhile(coroutine) -> asyncio.Task:
        """A request left running while the test goes on; ended (and its failure read) at the end."""
        tasks.append(asyncio.ensure_future(coroutine))
        return tasks[-1]

    try:
        yield types.SimpleNamespace(sup=sup, upstream=upstream, health=health, watching=watching,
                                    meanwhile=meanwhile)
    finally:
        for task in tasks:
            task.cancel()
        # Every task's outcome read: an unread failure logged by the garbage collector while pytest
        # parses source for a report re-enters ast.parse, which CPython 3.11.7 turns into a SystemError.
        await asyncio.gather(*tasks, return_exceptions=True)
        if not serving.done():
            serving.set_result(None)
        await asyncio.wait({watching}, timeout=30)
        watching.cancel()
        crashed = watching.exception() if watching.done() and not watching.cancelled() else None
        await sup.stop()
        assert all(child.returncode is not None
                   for pool in [sup.live, *sup.retiring] if pool for child in pool.children)
    if crashed is not None:
        raise crashed  # the watch failed, though the block did not


async def reload(rig: Rig, sup, model: dict) -> dict:
    """model.json names `model`, SIGUSR1 (as signalled), and the report of the swap that handled it."""
    rig.choose(model)
    sup.signalled()
    signalled = sup.received
    await until(lambda: rig.report()["handled"] >= signalled)
    return rig.report()


def test_the_first_pool_serves_and_the_report_names_its_model(rig):
    a = rig.model("a", speed=80)
    rig.choose(a)

    async def body():
        async with supervising(rig) as s:
            assert await ask(s.upstream) == (200, "a")
            assert s.health == {"model": "a", "sha256": a["sha256"]}
            assert b"llamacpp:requests_processing" in await s.upstream.metrics_text()
            assert s.sup.live.speed == 80 and s.sup.live.size == 2  # one ticket per slot
            return s.sup.live.children[0]

    child = run(body())
    report = rig.report()
    assert (report["result"], report["alias"], report["sha256"]) == ("started", "a", a["sha256"])
    assert (report["received"], report["handled"]) == (0, 0)
    assert child.returncode is not None


def test_a_first_model_that_fails_its_probe_stops_the_start_and_leaves_no_child(rig):
    rig.choose(rig.model("a", wrong_path=True))

    async def body():
        with pytest.raises(native.SwapFailed) as failure:
            await native.Supervisor(rig.config, native.Upstream(KEY), {}).start()
        assert failure.value.check == "identity"

    run(body())
    assert rig.count("a", "launch") == 1 and rig.count("a", "stop") == 1


def test_blue_green_new_requests_reach_the_new_model_while_the_old_one_finishes_what_it_had(rig):
    a, b = rig.model("a"), rig.model("b")
    rig.choose(a)
    release = rig.dir / "release"
    ok_before = swaps("ok")

    async def body():
        async with supervising(rig) as s:
            held = s.meanwhile(ask(s.upstream, wait_for=str(release)))
            await until(lambda: rig.count("a", "begin") == 2)  # the probe's completion, then this one
            received_before = rig.report()["received"]
            report = await reload(rig, s.sup, b)
            assert (report["result"], report["alias"], report["sha256"]) == ("ok", "b", b["sha256"])
            assert report["handled"] > received_before and "live_after_seconds" in report
            assert s.health["model"] == "b"
            assert await ask(s.upstream) == (200, "b")
            await asyncio.sleep(0.5)
            assert not held.done() and rig.count("a", "stop") == 0  # draining: not stopped under its request
            release.touch()
            assert await held == (200, "a")
            await until(lambda: not s.sup.retiring)  # drained, then stopped
            assert rig.count("a", "stop") == 1

    run(body())
    assert rig.index("b", "launch") < rig.index("a", "end", 1) < rig.index("a", "stop")
    assert swaps("ok") == ok_before + 1


def test_queue_mode_holds_new_requests_in_the_front_until_the_new_model_answers_them(rig):
    a, b = rig.model("a"), rig.model("b", swap="queue", load_s=0.3)
    rig.choose(a)
    release = rig.dir / "release"

    async def body():
        async with supervising(rig) as s:
            held = s.meanwhile(ask(s.upstream, wait_for=str(release)))
            await until(lambda: rig.count("a", "begin") == 2)
            rig.choose(b)
            s.sup.signalled()
            await until(lambda: s.upstream.pool is None)  # the swap began: the front holds requests
            waiting = s.meanwhile(ask(s.upstream))
            await asyncio.sleep(0.5)
            assert not waiting.done() and rig.count("b", "launch") == 0 and rig.count("a", "stop") == 0
            release.touch()
            assert await held == (200, "a")
            assert await waiting == (200, "b")
            await until(lambda: rig.report()["handled"] == 1)
            report = rig.report()
            assert (report["result"], report["alias"]) == ("ok", "b") and report["drain_seconds"] >= 0.4

    run(body())
    assert rig.index("a", "end", 1) < rig.index("a", "stop") < rig.index("b", "launch")  # one model at a time


@pytest.mark.parametrize("behaviour, check", [
    ({"crash_at_load": True}, "load"),
    ({"wrong_path": True}, "identity"),
    ({"tokens": 0}, "completion"),
    ({"fail_after": 0}, "completion"),
    ({"delay": 30}, "completion"),  # no answer within the probe's timeout
    ({"speed": 5}, "speed"),  # below 0.2 x the old model's 100 tokens/s, same size
], ids=["exits-while-loading", "serves-another-file", "zero-tokens", "answers-500", "no-answer", "too-slow"])
def test_a_new_model_failing_a_check_of_its_probe_leaves_the_old_one_serving(rig, behaviour, check):
    rig.config["probe"]["timeout_s"] = 1
    a, b = rig.model("a", speed=100), rig.model("b", **behaviour)
    rig.choose(a)
    failed_before = swaps("probe_failed")

    async def body():
        async with supervising(rig) as s:
            report = await reload(rig, s.sup, b)
            assert (report["result"], report["alias"]) == ("probe_failed", "a")
            assert f"failed its {check} check" in report["message"]
            assert s.health["model"] == "a" and s.sup.previous is None
            assert await ask(s.upstream) == (200, "a")

    run(body())
    assert rig.count("a", "launch") == 1 and rig.count("a", "stop") == 1  # never stopped before the end
    assert rig.count("b", "launch") == 1 and rig.count("b", "stop") + rig.count("b", "exit") == 1
    assert swaps("probe_failed") == failed_before + 1


def test_the_speed_floor_scales_with_the_size_ratio(rig):
    # Twice the size: weights read per token double, so 12 tokens/s is above 0.2 x 100 / 2 = 10.
    a, b = rig.model("a", speed=100), rig.model("b", size=2000, speed=12)
    rig.choose(a)

    async def body():
        async with supervising(rig) as s:
            assert (await reload(rig, s.sup, b))["result"] == "ok"
            assert s.sup.live.speed == 12

    run(body())


def test_a_queue_swap_that_fails_its_probe_starts_the_old_model_again(rig):
    a, b = rig.model("a"), rig.model("b", swap="queue", wrong_path=True)
    rig.choose(a)
    failed_before = swaps("probe_failed")

    async def body():
        async with supervising(rig) as s:
            first = s.sup.live.children[0].pid
            report = await reload(rig, s.sup, b)
            assert (report["result"], report["alias"]) == ("probe_failed", "a")
            assert "failed its identity check" in report["message"]
            assert s.health["model"] == "a" and s.sup.live.children[0].pid != first
            assert s.sup.live.speed == 50  # the first pool's probe, carried over
            assert await ask(s.upstream) == (200, "a")

    run(body())
    assert rig.index("a", "stop") < rig.index("b", "launch") < rig.index("b", "stop") < rig.index("a", "launch", 1)
    assert swaps("probe_failed") == failed_before + 1


def test_a_new_model_that_crashes_within_the_window_is_rolled_back(rig):
    a, b = rig.model("a"), rig.model("b", crash_after=1)  # passes its probe, dies on the next request
    rig.choose(a)
    rolled_before = swaps("rolled_back")

    async def body():
        async with supervising(rig) as s:
            assert (await reload(rig, s.sup, b))["result"] == "ok"
            # The child died with the request: a 503, which the gateway gives to another engine.
            assert await ask(s.upstream) == (503, None)
            await until(lambda: rig.report()["result"] == "rolled_back")
            report = rig.report()
            assert report["alias"] == "a" and "exited with [7]" in report["message"]
            assert s.health == {"model": "a", "sha256": a["sha256"]}
            assert await ask(s.upstream) == (200, "a")
            assert s.watching.done() is False and s.sup.previous is None

    run(body())
    rollback = rig.rollback()
    assert (rollback["from"]["sha256"], rollback["to"]["sha256"]) == (b["sha256"], a["sha256"])
    assert "exited" in rollback["reason"]
    assert swaps("rolled_back") == rolled_before + 1
    assert rig.count("a", "launch") == 2


def test_a_new_model_answering_5xx_within_the_window_is_rolled_back(rig):
    a, b = rig.model("a"), rig.model("b", fail_after=1)  # its probe passes, then every completion is a 500
    rig.choose(a)
    rolled_before = swaps("rolled_back")

    async def body():
        async with supervising(rig) as s:
            assert (await reload(rig, s.sup, b))["result"] == "ok"
            for _ in range(3):
                assert await ask(s.upstream) == (500, None)
            assert not s.sup.rollback_requested.is_set()  # 3 outcomes: fewer than the 4 the rule counts
            assert await ask(s.upstream) == (500, None)
            await until(lambda: rig.report()["result"] == "rolled_back")
            assert s.health["model"] == "a"
            assert await ask(s.upstream) == (200, "a")
            await until(lambda: rig.count("b", "stop") == 1)  # b, still alive, drained and stopped

    run(body())
    assert rig.rollback()["reason"] == "4 of its last 4 requests failed"
    assert rig.rollback()["to"]["sha256"] == a["sha256"]
    assert swaps("rolled_back") == rolled_before + 1


def test_a_crash_outside_the_window_ends_the_watch_without_a_rollback(rig):
    rig.config["rollback"]["window_s"] = 0
    a, b = rig.model("a"), rig.model("b")
    rig.choose(a)
    rolled_before = swaps("rolled_back")

    async def body():
        async with supervising(rig) as s:
            assert (await reload(rig, s.sup, b))["result"] == "ok"
            os.kill(s.sup.live.children[0].pid, signal.SIGKILL)
            assert await asyncio.wait_for(s.watching, 20) == f"a child exited with [{-signal.SIGKILL}]"

    run(body())
    assert rig.report()["result"] == "ok" and rig.rollback() is None
    assert swaps("rolled_back") == rolled_before


def test_a_rollback_is_remembered_across_a_restart_until_a_reload_asks_for_what_serves(rig):
    a, b = rig.model("a"), rig.model("b", crash_after=1)
    rig.choose(a)

    async def crash_and_roll_back():
        async with supervising(rig) as s:
            assert (await reload(rig, s.sup, b))["result"] == "ok"
            # The child died with the request: a 503, which the gateway gives to another engine.
            assert await ask(s.upstream) == (503, None)
            await until(lambda: rig.report()["result"] == "rolled_back")

    async def restart():
        async with supervising(rig) as s:  # model.json still names b
            assert s.health["model"] == "a"
            assert await ask(s.upstream) == (200, "a")
            assert rig.report()["result"] == "started" and rig.rollback() is not None
            assert (await reload(rig, s.sup, a))["result"] == "unchanged"
            assert rig.rollback() is None

    run(crash_and_roll_back())
    launched = rig.count("b", "launch")
    run(restart())
    assert rig.count("b", "launch") == launched  # the restart did not try b again


def test_failures_of_a_model_replaced_within_its_window_do_not_roll_back_its_successor(rig):
    loaded = rig.dir / "c-may-load"
    a, b, c = rig.model("a"), rig.model("b", fail_after=1), rig.model("c", load_until=str(loaded))
    rig.choose(a)

    async def body():
        async with supervising(rig) as s:
            assert (await reload(rig, s.sup, b))["result"] == "ok"
            rig.choose(c)
            s.sup.signalled()
            await until(lambda: rig.count("c", "launch") == 1)  # c loads; b serves meanwhile, failing
            for _ in range(4):
                assert await ask(s.upstream) == (500, None)
            loaded.touch()
            await until(lambda: rig.report()["handled"] == 2)
            assert (rig.report()["result"], rig.report()["alias"]) == ("ok", "c")
            await asyncio.sleep(1.0)
            assert rig.rollback() is None and rig.report()["result"] == "ok"
            assert s.health["model"] == "c"

    run(body())


@pytest.mark.parametrize("content", [
    "{not json",
    '{"alias": "x", "path": "/models/x.gguf"}',
], ids=["not-json", "no-sha256"])
def test_a_model_config_that_cannot_be_read_is_refused_and_the_old_model_serves_on(rig, content):
    a = rig.model("a")
    rig.choose(a)

    async def body():
        async with supervising(rig) as s:
            (rig.dir / "model.json").write_text(content)
            s.sup.signalled()
            await until(lambda: rig.report()["handled"] == 1 or s.watching.done())
            assert not s.watching.done()
            assert rig.report()["result"] == "refused" and "cannot read" in rig.report()["message"]
            assert await ask(s.upstream) == (200, "a")

    run(body())


def _reload_command(config: dict, timeout: float = 20) -> SystemExit | None:
    """`nas_ai_engine reload --pid <this process>`, in a thread: None, or how it exited."""
    try:
        native.request_reload(config, os.getpid(), timeout)
    except SystemExit as exit:
        return exit
    return None


def test_the_reload_command_waits_for_the_swap_its_signal_asked_for_and_exits_1_unless_it_serves(rig, capsys):
    a, b, c = rig.model("a"), rig.model("b"), rig.model("c", wrong_path=True)
    rig.choose(a)

    async def body():
        async with supervising(rig) as s:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, s.sup.signalled)
            try:
                rig.choose(b)
                assert await asyncio.to_thread(_reload_command, rig.config) is None
                assert s.health["model"] == "b"
                rig.choose(c)
                assert (await asyncio.to_thread(_reload_command, rig.config)).code == 1
                assert s.health["model"] == "b"
                rig.choose(b)
                assert await asyncio.to_thread(_reload_command, rig.config) is None
            finally:
                loop.remove_signal_handler(signal.SIGUSR1)

    run(body())
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["ok", "probe_failed", "unchanged"]


def test_the_reload_command_gives_up_when_no_swap_report_answers_its_signal(rig):
    async def body():
        sup = native.Supervisor(rig.config, native.Upstream(KEY), {})  # notes signals, never swaps
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, sup.signalled)
        try:
            exit = await asyncio.to_thread(_reload_command, rig.config, 1)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        assert "no swap report within 1 s" in str(exit.code)
        assert (rig.report()["received"], rig.report()["handled"]) == (1, 0)

    run(body())


def test_a_stopped_child_is_killed_as_hung_and_the_watchdog_beats_only_while_it_answers(rig, monkeypatch):
    """SIGSTOP of the live llama-server: its /health goes silent; after LIVENESS_STRIKES misses it
    is killed, and outside a rollback window `watch` ends (the unit restarts). systemd's watchdog
    (a real datagram socket as NOTIFY_SOCKET) hears WATCHDOG=1 only while the child answers."""
    monkeypatch.setattr(native, "LIVENESS_INTERVAL_S", 0.2)
    notify_path = str(rig.dir / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    rig.choose(rig.model("a"))

    def beats() -> int:
        count = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                assert listener.recv(64) == b"WATCHDOG=1"
                count += 1
        return count

    async def body():
        async with supervising(rig) as s:
            liveness = asyncio.ensure_future(s.sup.liveness())
            try:
                await asyncio.sleep(1.0)
                assert beats() >= 3
                child = s.sup.live.children[0]
                os.kill(child.pid, signal.SIGSTOP)
                stopped = time.monotonic()
                await asyncio.sleep(0.3)
                beats()  # those sent before the first miss
                await until(lambda: child.returncode is not None, timeout=10)
                killed_after = time.monotonic() - stopped
                assert child.returncode == -signal.SIGKILL
                assert native.LIVENESS_STRIKES * 0.2 <= killed_after < 5
                await until(lambda: s.watching.done(), timeout=10)
                assert "exited with [-9]" in s.watching.result()
                # While the child was stopped, no beat: the misses were not reported as alive.
                assert beats() <= 1
            finally:
                liveness.cancel()

    try:
        run(body())
    finally:
        listener.close()
