"""Faults while users are served (issue 13, a first case): the gateway's nginx reloaded under 20
concurrent streams, first with a broken configuration (refused, the old one serves on), then with a
valid change made by a deploy (new workers take new requests, the old ones finish their streams).
No stream may be cut. Each case prints its figures."""

import json
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
from nas_ai_engine.sse import DataParser

from tasks.gateway import MAIN_CONF_PATH
from tasks.settings import resolve
from tests.lab.harness import deployed, lab_host

pytestmark = pytest.mark.lab
STREAMS = 20
TOKENS = 480  # 20 streams of it last about 40 s on the lab's two cores: longer than a deploy
# SmolLM2's end-of-text tokens, suppressed: each stream writes TOKENS tokens, never fewer.
NO_END = {"0": -100, "2": -100}


@dataclass
class Stream:
    started: float = 0.0
    first_byte: float | None = None
    ended: float | None = None
    tokens: int = 0  # chunks with text: llama-server may send a character's bytes in one
    finish_reason: str | None = None
    error: str | None = None
    events: DataParser = field(default_factory=DataParser)


def _stream(url: str, key: str, stream: Stream) -> None:
    stream.started = time.monotonic()
    body = {"model": "smollm2-135m-instruct", "max_tokens": TOKENS, "stream": True, "logit_bias": NO_END,
            "messages": [{"role": "user", "content": "Tell me about your NAS, at length."}]}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300,
                          headers={"Authorization": f"Bearer {key}"}) as response:
            if response.status_code != 200:
                stream.error = f"{response.status_code}: {response.read()[:200]!r}"
                return
            for chunk in response.iter_bytes():
                if stream.first_byte is None:
                    stream.first_byte = time.monotonic()
                for payload in stream.events.feed(chunk):
                    choice = (json.loads(payload).get("choices") or [{}])[0]
                    if (choice.get("delta") or {}).get("content"):
                        stream.tokens += 1
                    stream.finish_reason = choice.get("finish_reason") or stream.finish_reason
    except (httpx.HTTPError, ValueError) as error:  # a cut connection, or a chunk cut mid-JSON
        stream.error = f"{type(error).__name__}: {error}"
    finally:
        stream.ended = time.monotonic()


@pytest.fixture
def many_streams_allowed(deployment):
    """The lab's key may hold STREAMS at once for this test; the deploy after it puts the limits back."""
    deployed("inventory/lab.py", "--data", f"gateway_concurrent_per_key={STREAMS}")
    yield
    deployed("inventory/lab.py")


def test_nginx_reloads_under_20_streams_cut_none(deployment, gateway_url, api_key, many_streams_allowed):
    name, data = deployment["groups"]["gateway"][0]
    gateway = lab_host(name)
    nginx_pid = gateway.check_output("systemctl show -p MainPID --value nginx")
    streams = [Stream() for _ in range(STREAMS)]
    threads = [threading.Thread(target=_stream, args=(gateway_url, api_key, s)) for s in streams]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while sum(s.first_byte is not None for s in streams) < STREAMS - 4 and time.monotonic() < deadline:
        time.sleep(0.2)  # the engines' slots (2 x 8) busy; the rest wait for tickets

    # A broken configuration: nginx refuses to load it and serves on with the old one.
    gateway.check_output("echo 'this is not nginx;' > /etc/nginx/conf.d/zz-broken.conf")
    try:
        broken = gateway.run("systemctl reload nginx")
    finally:
        gateway.check_output("rm -f /etc/nginx/conf.d/zz-broken.conf")
    assert broken.rc != 0
    # A valid change, as an operator makes it: a deploy that reloads nginx.
    deploy_started = time.monotonic()
    deployed("inventory/lab.py", "--data", f"gateway_concurrent_per_key={STREAMS}",
             "--data", "gateway_rate_per_minute=599")
    reloaded = time.monotonic()
    for thread in threads:
        thread.join(timeout=300)

    in_flight = sum(s.ended > reloaded for s in streams)
    print(f"nginx reloads under {STREAMS} streams of {TOKENS} tokens: broken config refused (rc {broken.rc}); "
          f"valid change deployed in {reloaded - deploy_started:.1f} s with {in_flight} streams still in "
          f"flight after it; streams lasted {min(s.ended - s.started for s in streams):.1f} to "
          f"{max(s.ended - s.started for s in streams):.1f} s; "
          f"cut {sum(s.error is not None or not s.events.done for s in streams)}")
    assert [(s.error, s.events.done, s.finish_reason) for s in streams] == [(None, True, "length")] * STREAMS
    assert all(s.tokens > TOKENS // 2 for s in streams), [s.tokens for s in streams]
    assert in_flight > 0  # the reload happened while streams were being written
    assert gateway.check_output("systemctl show -p MainPID --value nginx") == nginx_pid  # reloaded, not restarted
    timeout_s = resolve(name, data).gateway_read_timeout_s + 60
    assert f"worker_shutdown_timeout {timeout_s}s;" in gateway.check_output(f"cat {MAIN_CONF_PATH}")
