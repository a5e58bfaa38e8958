"""The controller's bounded wait (lab/waiting.py) and the engine's (nas_ai_engine/readiness.py)."""

import asyncio
import http.server
import threading

import pytest
from nas_ai_engine import readiness

from lab.waiting import TimedOut, wait_until


def _counter(ready_at: int):
    calls = []

    def check():
        calls.append(None)
        return len(calls) if len(calls) >= ready_at else 0
    return check, calls


def test_returns_the_checks_value_once_ready():
    check, calls = _counter(3)
    assert wait_until(check, 5, "the third call", interval=0) == 3 and len(calls) == 3


def test_a_timeout_names_what_and_the_last_outcome():
    with pytest.raises(TimedOut, match=r"timed out after 0 s waiting for panels \(last: \['nas1: up'\]\)") as raised:
        wait_until(lambda: ["nas1: up"], 0.05, "panels", interval=0.01, ready=lambda missing: not missing)
    assert raised.value.last == ["nas1: up"]
    with pytest.raises(TimedOut, match=r"waiting for a flag$"):  # a bare False adds nothing
        wait_until(lambda: False, 0.02, "a flag", interval=0.01)


def test_listed_exceptions_mean_not_yet_and_others_propagate():
    attempts = iter([ConnectionError("refused"), ConnectionError("refused"), "up"])

    def check():
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert wait_until(check, 5, "the port", interval=0, retry_on=(ConnectionError,)) == "up"

    def refused():
        raise ConnectionError("refused")

    with pytest.raises(TimedOut, match=r"\(last: ConnectionError\('refused'\)\)"):
        wait_until(refused, 0.02, "x", interval=0.01, retry_on=(ConnectionError,))
    with pytest.raises(KeyError):
        wait_until(lambda: {}["missing"], 5, "x", interval=0)


def test_the_engines_waits_say_whether_it_answered():
    check, _ = _counter(2)
    assert readiness.ready_within(check, 5, interval=0)
    assert not readiness.ready_within(lambda: False, 0.02, interval=0.01)

    async def never():
        return False

    assert not asyncio.run(readiness.ready_within_async(never, 0.02, interval=0.01))


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_answers_200_only_for_a_200():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert readiness.answers_200(f"{base}/health")
        assert not readiness.answers_200(f"{base}/loading")
    finally:
        server.shutdown()
        server.server_close()
    assert not readiness.answers_200(f"{base}/health")  # nothing listens any more
