"""Faults while users are served (issue 13): the gateway's nginx reloaded under 20 concurrent
streams, first with a broken configuration (refused, the old one serves on), then with a valid
change made by a deploy (new workers take new requests, the old ones finish their streams); an
engine killed (its llama-server, or its front) or hung (SIGSTOP) mid-generation; a host powered
off under Locust and back; the model store's disk and Prometheus's disk full. Each case asserts
what the stack promises and prints its figures. The faults that need a kernel of their own (CPU
and memory pressure from the NAS's services, a reboot) are in test_90_vm.py."""

import datetime
import json
import re
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
from nas_ai_engine.sse import DataParser

from lab.waiting import wait_until
from tasks import model_rollout, monitoring
from tasks.gateway import ACCESS_LOG, MAIN_CONF_PATH
from tasks.monitoring import ALERTMANAGER_ADDRESS, PROMETHEUS_ADDRESS
from tasks.settings import resolve
from tests.lab import models
from tests.lab.harness import (
    deploy,
    deploy_failure,
    deployed,
    engine_requests_served,
    fill,
    lab,
    lab_host,
    locust_load,
    requests_and_failures,
    small_disk,
    ssh_tunnel,
)

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


def _stream(url: str, key: str, stream: Stream, tokens: int = TOKENS) -> None:
    stream.started = time.monotonic()
    body = {"model": "smollm2-135m-instruct", "max_tokens": tokens, "stream": True, "logit_bias": NO_END,
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


# In flight when the fault comes, about 2.5 s after the streams' first bytes: 200 tokens lasted
# about 5 to 6 s on the lab pair once slot placement and the prompt cache came, too close.
SHORT_STREAM_TOKENS = 400
# The unplug comes later, after Locust has started (one CI run with 200 tokens: none cut).
LOST_STREAM_TOKENS = 800


@dataclass
class Asked:
    sent: float
    ended: float
    status: int | str


class Asker(threading.Thread):
    """A user who asks a short question every 0.3 s through the gateway, plain (not streamed)."""

    def __init__(self, url: str, key: str):
        super().__init__(daemon=True)
        self.url, self.key, self.asked, self.stop = url, key, [], threading.Event()

    def run(self):
        body = {"model": "smollm2-135m-instruct", "max_tokens": 4,
                "messages": [{"role": "user", "content": "Name one colour."}]}
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {self.key}"}) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    status = client.post(f"{self.url}/v1/chat/completions", json=body).status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                self.asked.append(Asked(sent, time.monotonic(), status))
                time.sleep(0.3)


def _ask_once(url: str, key: str) -> bool:
    answer = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                        json={"model": "smollm2-135m-instruct", "max_tokens": 2,
                              "messages": [{"role": "user", "content": "Hi"}]})
    return answer.status_code == 200


def _off_gateway(deployment) -> tuple[str, str, dict, str]:
    """(gateway, victim, its data, its engine as the gateway reaches it): the fault goes to the
    inference host that is not the gateway."""
    gateway_name = deployment["groups"]["gateway"][0][0]
    victim, data = next((name, data) for name, data in deployment["groups"]["inference"] if name != gateway_name)
    return gateway_name, victim, data, f"{data['ssh_hostname']}:{resolve(victim, data).engine_port}"


def _until_served(gateway_url: str, api_key: str, gateway, engine: str, what: str, timeout: float = 90) -> None:
    """Ask through the gateway until `engine` has answered one more request: nginx has it in its
    pool (it leaves an engine that failed out for fail_timeout)."""
    served = engine_requests_served(gateway, engine)
    wait_until(lambda: _ask_once(gateway_url, api_key) and engine_requests_served(gateway, engine) > served, timeout,
               what, interval=1)


def _streaming(url: str, key: str, count: int, timeout: float,
               tokens: int = SHORT_STREAM_TOKENS) -> tuple[list[Stream], list[threading.Thread]]:
    """`count` streams of `tokens`, once each has its first byte (or `timeout` passed)."""
    streams = [Stream() for _ in range(count)]
    threads = [threading.Thread(target=_stream, args=(url, key, s, tokens)) for s in streams]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    while sum(s.first_byte is not None for s in streams) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return streams, threads


def _engine(host) -> dict:
    front = host.check_output("systemctl show -p MainPID --value nas-ai-engine")
    return {"front": front, "active": host.run("systemctl is-active -q nas-ai-engine").rc == 0,
            "children": host.run(f"pgrep -P {front} -x llama-server").stdout.split(),
            "restarts": int(host.check_output("systemctl show -p NRestarts --value nas-ai-engine")),
            "all_llama_servers": host.run("pgrep -x llama-server").stdout.split()}


@pytest.mark.parametrize("fault", ["kill llama-server", "kill the front", "stop llama-server"])
def test_an_engine_killed_or_hung_mid_generation_comes_back_and_the_gateway_routes_around(
        deployment, gateway_url, api_key, fault):
    """SIGKILL of the inference process or of the front, or SIGSTOP of the inference process (a hung
    engine), on the host that is not the gateway, while 4 streams and a short-question user are
    served. The streams on that host end with an error (never finished elsewhere once bytes were
    sent); the user's questions keep being answered by the other host, except those the hung
    engine held; the unit comes back with one llama-server and no orphan."""
    gateway_name, victim, _, engine = _off_gateway(deployment)
    host = lab_host(victim)
    before = _engine(host)
    assert before["active"] and len(before["children"]) == 1
    # The victim of the previous case must be back in nginx's pool before the streams start.
    _until_served(gateway_url, api_key, lab_host(gateway_name), engine, f"the gateway to send requests to {victim} again")
    streams, threads = _streaming(gateway_url, api_key, 4, 120)
    asker = Asker(gateway_url, api_key)
    asker.start()
    time.sleep(2)
    signal, pid = {"kill llama-server": ("KILL", before["children"][0]), "kill the front": ("KILL", before["front"]),
                   "stop llama-server": ("STOP", before["children"][0])}[fault]
    faulted = time.monotonic()
    host.check_output(f"kill -{signal} {pid}")
    after = wait_until(lambda: _engine(host), 120, f"the engine on {victim} back after `{fault}`",
                       ready=lambda e: e["active"] and e["front"] not in ("0", before["front"]) and len(e["children"]) == 1,
                       interval=0.5)
    back_s = time.monotonic() - faulted
    for thread in threads:
        thread.join(timeout=300)
    time.sleep(3)
    asker.stop.set()
    asker.join(timeout=130)
    cut = [s for s in streams if s.error is not None or not s.events.done]
    failed = [a for a in asker.asked if a.status != 200]
    print(f"{fault} on {victim} with {len(streams)} streams of {SHORT_STREAM_TOKENS} tokens in flight: back and "
          f"serving in {back_s:.1f} s (NRestarts {before['restarts']} -> {after['restarts']}); streams cut "
          f"{len(cut)}, each ended {', '.join(f'{s.ended - faulted:.1f}' for s in cut)} s after the fault, the others "
          f"{', '.join(f'{s.ended - faulted:.1f}' for s in streams if s not in cut)} s; short questions {len(asker.asked)}, failed {len(failed)} "
          f"({', '.join(f'{a.status} sent {a.sent - faulted:+.1f} s' for a in failed)})")
    assert cut, "no stream was on the faulted engine"
    assert all(s.ended - faulted < 45 for s in cut)  # the hang is detected in 15 s, not the 600 s read timeout
    assert all(s.finish_reason == "length" and s.tokens > SHORT_STREAM_TOKENS // 2 for s in streams if s not in cut)
    assert after["restarts"] == before["restarts"] + 1
    assert after["all_llama_servers"] == after["children"]  # no orphan of the old front
    # Only questions the hung engine held fail; the other host answers the rest.
    assert all(a.sent < faulted + back_s for a in failed)
    if signal == "KILL":
        assert failed == []
    assert len(asker.asked) - len(failed) > 10


def _alerts(alertmanager: str, alertname: str, node: str) -> list[dict]:
    alerts = httpx.get(f"{alertmanager}/api/v2/alerts", params={"active": "true"}, timeout=10).json()
    return [a for a in alerts if a["labels"].get("alertname") == alertname and a["labels"].get("node") == node]


def _retried(gateway, since: float) -> list[float]:
    """When the gateway passed a request to a second engine after the first failed (nginx lists
    both in $upstream_addr), in seconds after `since`: each went to an engine twice, never to the
    client twice."""
    entries = [json.loads(line) for line in gateway.check_output(f"cat {ACCESS_LOG}").splitlines()]
    return [when - since for when in (datetime.datetime.fromisoformat(e["time"]).timestamp()
                                      for e in entries if ", " in e["upstream"]) if when >= since - 1]


def test_a_host_unplugged_under_load_is_routed_around_alerted_and_rejoins_by_itself(
        deployment, gateway_url, api_key, tmp_path):
    """The host that is not the gateway unplugged (its link cut, then every process killed: it
    sends nothing more, not even a FIN) while 2 streams, 4 Locust users (the workload mix) and a
    short-question user are served through the gateway, then powered on again. The streams on it
    end with an error when the gateway's keepalive probes go unanswered, not after the 600 s read
    timeout; nothing the gateway had not sent bytes of fails; the host comes back into the pool by
    itself; TargetDown fires and resolves."""
    gateway_name, victim, _, engine = _off_gateway(deployment)
    gateway = lab_host(gateway_name)
    _until_served(gateway_url, api_key, gateway, engine, f"the gateway to send requests to {victim} again")
    # Two streams first, one on each idle engine (least_conn); with the Locust users and the asker,
    # 7 requests in flight at most: within the lab key's 8 (the streams on the lost host hold theirs
    # until the keepalive probes give up).
    streams, threads = _streaming(gateway_url, api_key, 2, 60, LOST_STREAM_TOKENS)
    asker = Asker(gateway_url, api_key)
    with ssh_tunnel(gateway_name, ALERTMANAGER_ADDRESS) as alertmanager:
        with locust_load(gateway_url, api_key, tmp_path / "lost", 45, stream_share=0.8):
            asker.start()
            time.sleep(3)
            lost, lost_at = time.monotonic(), time.time()
            unplugged = lab("power", "off", victim)
            assert unplugged.returncode == 0, unplugged.stderr
            off_s = time.monotonic() - lost
        sent, failed, errors = requests_and_failures(tmp_path / "lost")
        for thread in threads:
            thread.join(timeout=660)
        alerted = wait_until(lambda: _alerts(alertmanager, "TargetDown", victim), 240,
                             f"TargetDown for {victim}'s engine and node in Alertmanager", interval=2,
                             ready=lambda alerts: {a["labels"]["job"] for a in alerts} >= {"engine", "node"})
        alerted_s = time.monotonic() - lost
        powered_on = time.monotonic()
        boot = lab("power", "on", victim)
        assert boot.returncode == 0, boot.stderr
        booted_s = time.monotonic() - powered_on
        _until_served(gateway_url, api_key, gateway, engine, f"{victim} to serve requests through the gateway again",
                      timeout=120)
        rejoined_s = time.monotonic() - powered_on
        wait_until(lambda: not _alerts(alertmanager, "TargetDown", victim), 240, "TargetDown to resolve", interval=2)
        resolved_s = time.monotonic() - powered_on
    asker.stop.set()
    asker.join(timeout=130)
    host = lab_host(victim)
    units = "nas-ai-engine nas-ai-firewall prometheus-node-exporter"
    failed_asked = [a for a in asker.asked if a.status != 200]
    # Sent while the host was gone (the question it held, if any, was sent before and waits on it).
    during = [a for a in asker.asked if lost <= a.sent < powered_on]
    cut = [s for s in streams if s.error is not None or not s.events.done]
    waits = sorted(a.ended - a.sent for a in during)
    retried = _retried(gateway, lost_at)
    print(f"{victim} unplugged ({off_s:.1f} s) under {len(streams)} streams of {LOST_STREAM_TOKENS} tokens, 4 Locust users of "
          f"the mix and a short-question user: streams cut {len(cut)}, each ended "
          f"{', '.join(f'{s.ended - lost:.1f}' for s in cut)} s after the loss; Locust {sent} requests, {failed} "
          f"failed ({'; '.join(errors) or 'none'}); short questions during the loss {len(during)}, failed "
          f"{len(failed_asked)} ({', '.join(f'{a.status} sent {a.sent - lost:+.1f} s' for a in failed_asked)}), median {waits[len(waits) // 2]:.2f} s, over 1.5 s {sum(w > 1.5 for w in waits)}, "
          f"slowest {waits[-1]:.1f} s; retried on the other engine {len(retried)}, the last "
          f"{max(retried, default=0):.0f} s after the loss; TargetDown {len(alerted)} alerts active {alerted_s:.0f} s "
          f"after the loss (for: 1m); powered on: booted in {booted_s:.1f} s, serving through the gateway "
          f"{rejoined_s:.1f} s, TargetDown resolved {resolved_s:.0f} s after power-on")
    assert cut, "no stream was on the unplugged host"
    assert all(s.ended - lost < 90 for s in cut)  # the keepalive probes, not the 600 s read timeout
    assert all(s.finish_reason == "length" for s in streams if s not in cut)
    # The Locust users' requests in flight on the lost host are the only failures (one each at
    # most): a stream cut, or a plain request answered 503 once the probes gave up (too late for
    # another engine). Nothing sent after the loss is refused.
    assert failed <= 4, errors
    assert all("ChunkedEncodingError" in e or "engine_unavailable" in e for e in errors), errors
    # Only the question the unplugged engine held (if any) fails: too late to try another engine.
    # It may have been sent while `lab power off` ran (the link goes down within those off_s).
    assert len(failed_asked) <= 1 and all(a.sent < lost + off_s for a in failed_asked), failed_asked
    # Nor does the lost host hold a question sent once its link was down: one sent to it on a kept
    # connection would wait for its return (108 s in a CI run) or the kernel's give-up (minutes);
    # a new connection fails in the 1 s connect timeout and the other engine answers.
    held = [a for a in asker.asked if a.sent >= lost + off_s and a.ended - a.sent > 30]
    assert not held, held
    assert set(host.run(f"systemctl is-active {units}").stdout.split()) == {"active"}


def _prometheus_alerts(prometheus: str, alertname: str, **labels) -> list[dict]:
    """Alerts pending or firing in Prometheus itself: a rule's expression true, before its `for`."""
    answer = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()
    return [a for a in answer["data"]["alerts"]
            if a["labels"].get("alertname") == alertname and all(a["labels"].get(k) == v for k, v in labels.items())]


def test_a_full_model_store_keeps_the_engine_serving_refuses_a_new_model_and_warns(
        deployment, gateway_url, api_key):
    """The model store of the host that is not the gateway on a volume of its own, filled to 99 %
    by something else on the NAS: the engine serves on from the model it has loaded, a deploy of a
    new model is refused by preflight with what to change (every host keeps its model), and
    DiskNearlyFull's expression holds for that volume (pending: it fires after its 10 minutes)."""
    gateway_name, victim, data, engine = _off_gateway(deployment)
    store = resolve(victim, data).model_store_dir
    gateway, host = lab_host(gateway_name), lab_host(victim)
    names = [name for name, _ in deployment["groups"]["inference"]]
    model_json = model_rollout.config_path(resolve(victim, data))
    configs = {name: lab_host(name).check_output(f"cat {model_json}") for name in names}
    gemma = models.gemma()
    with small_disk(victim, store, 512), ssh_tunnel(gateway_name, PROMETHEUS_ADDRESS) as prometheus:
        wait_until(lambda: not _prometheus_alerts(prometheus, "DiskNearlyFull", node=victim, mountpoint=store), 330,
                   f"no DiskNearlyFull for {store} on {victim} before the fill", interval=5)
        filler = fill(host, store, leave_bytes=5 << 20)
        filled = time.monotonic()
        pending = wait_until(lambda: _prometheus_alerts(prometheus, "DiskNearlyFull", node=victim, mountpoint=store),
                             120, f"DiskNearlyFull pending for {store} on {victim}", interval=2)
        pending_s = time.monotonic() - filled
        _until_served(gateway_url, api_key, gateway, engine, f"the engine on {victim} to answer with its disk full")
        deploying = time.monotonic()
        refused = deploy("inventory/lab.py", *models.model_data(models.GEMMA_NAME, gemma, models.GEMMA_SHA256),
                         who="faults: a new model onto a full store")
        refused_s = time.monotonic() - deploying
        after = {name: lab_host(name).check_output(f"cat {model_json}") for name in names}
        free_mib = int(host.check_output(f"df -B1 --output=avail {store} | tail -1")) >> 20
        host.check_output(f"rm -f {filler}")
    message = deploy_failure(refused)
    print(f"model store {store} on {victim} filled ({free_mib} MiB left of 512): DiskNearlyFull pending "
          f"{pending_s:.0f} s after the fill ({pending[0]['state']}); engine answered through the gateway; "
          f"deploy of Gemma refused in {refused_s:.1f} s: {message.strip().splitlines()[-1][:300]}")
    assert refused.returncode != 0
    assert f"MiB free at {store}" in message and "free space or move model_store_dir" in message, message
    assert after == configs  # no host changed its model, the full one nor the others


def _sample_time(prometheus: str) -> float:
    """When Prometheus last stored a sample of its own scrape."""
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": 'timestamp(up{job="prometheus"})'},
                       timeout=10).json()
    return float(answer["data"]["result"][0]["value"][1])


def test_prometheus_on_a_small_disk_keeps_a_cap_that_fits_and_recovers_from_a_full_one(deployment):
    """Prometheus's samples on a 256 MiB disk of their own: the deploy refuses the default 2GB cap
    (it would fill the disk first) and says the largest that fits; with that cap, filling the disk to
    95 % makes DiskNearlyFull pending; filled to the last byte, Prometheus stays up, and once space is
    freed it stores samples again by itself."""
    monitor_name = deployment["groups"]["gateway"][0][0]  # the lab's first host: gateway and monitoring
    monitor = lab_host(monitor_name)
    tsdb = monitoring.TSDB_DIR
    monitor.check_output("systemctl stop prometheus")
    try:
        with small_disk(monitor_name, tsdb, 256):
            try:
                monitor.check_output("systemctl start prometheus")
                refused = deploy("inventory/lab.py", who="faults: Prometheus's 2GB cap on a 256 MiB disk")
                refusal = deploy_failure(refused)
                largest = re.search(r"at most (\d+MiB)", refusal)
                assert refused.returncode != 0 and largest, refusal
                deployed("inventory/lab.py", "--data", f"monitoring_retention_size={largest[1]}",
                         who="faults: the largest cap that fits")
                pid = monitor.check_output("systemctl show -p MainPID --value prometheus")
                with ssh_tunnel(monitor_name, PROMETHEUS_ADDRESS) as prometheus:
                    # Prometheus was restarted by the deploy (a new cap) and may still be loading.
                    starting = (httpx.HTTPError, ValueError, KeyError, IndexError)
                    wait_until(lambda: _sample_time(prometheus) > time.time() - 30, 60, "Prometheus to scrape",
                               retry_on=starting)
                    wait_until(lambda: not _prometheus_alerts(prometheus, "DiskNearlyFull", node=monitor_name,
                                                              mountpoint=tsdb), 330,
                               f"no DiskNearlyFull for {tsdb} before the fill", interval=5, retry_on=starting)
                    fillers = [fill(monitor, tsdb, leave_bytes=12 << 20)]
                    nearly_full = time.monotonic()
                    wait_until(lambda: _prometheus_alerts(prometheus, "DiskNearlyFull", node=monitor_name,
                                                          mountpoint=tsdb), 120, f"DiskNearlyFull for {tsdb}",
                               interval=2)
                    pending_s = time.monotonic() - nearly_full
                    fillers.append(fill(monitor, tsdb, name="lab-filler-last"))
                    full_at = time.time()
                    time.sleep(45)  # three scrapes and rule evaluations with no byte free
                    healthy = httpx.get(f"{prometheus}/-/healthy", timeout=10).status_code
                    stored_while_full = _sample_time(prometheus) - full_at
                    errors = monitor.check_output(
                        "journalctl -u prometheus --no-pager -o cat --since '-50s' | grep -ci 'no space' || true")
                    monitor.check_output(f"rm -f {' '.join(fillers)}")
                    freed_at = time.time()
                    wait_until(lambda: _sample_time(prometheus) > freed_at, 120,
                               "Prometheus to store samples again after the disk was freed", interval=2)
                    recovered_s = _sample_time(prometheus) - freed_at
                    same_process = monitor.check_output("systemctl show -p MainPID --value prometheus") == pid
            finally:
                monitor.run("systemctl stop prometheus")  # off the small disk before it goes
    finally:
        monitor.run("systemctl start prometheus")
        deployed("inventory/lab.py", who="faults: Prometheus's default cap back")
    print(f"Prometheus on a 256 MiB disk: the 2GB cap refused ({refusal.strip().splitlines()[-1][:240]}); "
          f"with {largest[1]}: DiskNearlyFull pending {pending_s:.0f} s after the disk was 95 % full; with no "
          f"byte free for 45 s: /-/healthy {healthy}, newest sample {stored_while_full:+.0f} s from the fill, "
          f"{errors} 'no space' lines in its journal; samples stored again {recovered_s:.0f} s after the "
          f"space was freed, {'same process' if same_process else 'after a restart'}")
    assert healthy == 200
    assert recovered_s < 60
