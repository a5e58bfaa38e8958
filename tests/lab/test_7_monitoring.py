"""Monitoring on the lab: every target up, the engine's metrics count what was sent, and a
stopped engine fires TargetDown in Alertmanager, resolved once it is back."""

import time

import httpx
import pytest

from lab.waiting import wait_until
from tasks import secrets
from tasks.monitoring import ALERTMANAGER_ADDRESS, PROMETHEUS_ADDRESS
from tests.lab.harness import http_from, lab_host, ssh_tunnel

pytestmark = pytest.mark.lab
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def monitoring(deployment):
    """Prometheus and Alertmanager listen on loopback alone: reached through SSH tunnels."""
    name, _ = deployment["groups"]["gateway"][0]  # monitoring defaults to the first host too
    with ssh_tunnel(name, PROMETHEUS_ADDRESS) as prometheus, ssh_tunnel(name, ALERTMANAGER_ADDRESS) as alertmanager:
        yield {"prometheus": prometheus, "alertmanager": alertmanager, "host": lab_host(name),
               "groups": deployment["groups"]}


def _targets(prometheus: str) -> list[dict]:
    return httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]


def test_every_target_is_up(monitoring):
    inference = [name for name, _ in monitoring["groups"]["inference"]]
    gateways = [name for name, _ in monitoring["groups"]["gateway"]]
    expected = {("node", n) for n in inference} | {("engine", n) for n in inference} | \
        {("nginx", n) for n in gateways} | {("gateway", n) for n in gateways}
    wait_until(lambda: all(t["health"] == "up" for t in _targets(monitoring["prometheus"])), 90, "every target up",
               interval=2)
    found = {(t["labels"]["job"], t["labels"].get("node")) for t in _targets(monitoring["prometheus"])}
    assert expected <= found


def _samples(monitoring, job: str = "engine", prefix: str = "nas_ai_engine_") -> dict[str, float]:
    """Totals over every target of a job, read from their /metrics as Prometheus reads them."""
    totals: dict[str, float] = {}
    for target in _targets(monitoring["prometheus"]):
        if target["labels"]["job"] != job:
            continue
        status, body = http_from(monitoring["host"], target["scrapeUrl"])
        assert status == 200
        for line in body.splitlines():
            if line.startswith(prefix):
                key, value = line.rsplit(" ", 1)
                totals[key] = totals.get(key, 0) + float(value)
    return totals


def test_engine_metrics_count_the_requests_sent(monitoring, gateway_url, api_key):
    before = _samples(monitoring)
    headers = {"Authorization": f"Bearer {api_key}"}
    generated = 0
    for _ in range(4):
        reply = httpx.post(f"{gateway_url}/v1/completions", headers=headers, timeout=60,
                           json={"model": MODEL, "prompt": "The sky is", "max_tokens": 3})
        generated += reply.json()["usage"]["completion_tokens"]
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": MODEL, "max_tokens": 8, "stream": True,
                            "messages": [{"role": "user", "content": "Say hi."}]}) as stream:
        stream.read()
    after = _samples(monitoring)

    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    assert delta('nas_ai_engine_requests_total{endpoint="/v1/completions",status="200"}') == 4
    assert delta('nas_ai_engine_requests_total{endpoint="/v1/chat/completions",status="200"}') == 1
    assert delta('nas_ai_engine_time_to_first_token_seconds_count{endpoint="/v1/chat/completions"}') == 1
    assert delta("nas_ai_engine_queue_wait_seconds_count") == 5
    assert delta("nas_ai_engine_generated_tokens_total") >= generated + 1
    assert after["nas_ai_engine_requests_in_flight"] == 0


def test_gateway_answers_are_counted_by_status_and_client(monitoring, gateway_url, api_key):
    client = next(name for name, key in secrets.api_keys(None).items() if key == api_key)
    refused = 'nas_ai_gateway_responses_total{client="none",status="401"}'
    served = f'nas_ai_gateway_responses_total{{client="{client}",status="200"}}'
    before = _samples(monitoring, "gateway", "nas_ai_gateway_")
    for key in ("not-a-key-of-this-gateway", "another-wrong-key-0123456789"):
        assert httpx.get(f"{gateway_url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert httpx.get(f"{gateway_url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}).status_code == 200

    def counted():
        after = _samples(monitoring, "gateway", "nas_ai_gateway_")
        return (after.get(refused, 0) - before.get(refused, 0), after.get(served, 0) - before.get(served, 0))

    wait_until(lambda: counted() != (0, 0), 30, "mtail to read the access log", interval=2)
    time.sleep(1)  # and to have read all of it
    assert counted() == (2, 1)


def _active_alerts(alertmanager: str, **labels) -> list[dict]:
    alerts = httpx.get(f"{alertmanager}/api/v2/alerts", params={"active": "true"}, timeout=10).json()
    return [a for a in alerts if all(a["labels"].get(k) == v for k, v in labels.items())
            and a["status"]["state"] == "active"]


def test_a_stopped_engine_fires_target_down_and_its_return_resolves_it(monitoring):
    name = monitoring["groups"]["inference"][-1][0]
    engine_host = lab_host(name)
    engine_host.check_output("systemctl stop nas-ai-engine")
    stopped = time.monotonic()
    try:
        wait_until(lambda: _active_alerts(monitoring["alertmanager"], alertname="TargetDown", job="engine", node=name),
                   180, f"TargetDown for the engine of {name} in Alertmanager", interval=2)
        print(f"TargetDown active in Alertmanager {time.monotonic() - stopped:.0f} s after the stop (for: 1m)")
    finally:
        engine_host.check_output("systemctl start nas-ai-engine")
    wait_until(lambda: not _active_alerts(monitoring["alertmanager"], alertname="TargetDown", node=name), 180,
               "TargetDown to resolve", interval=2)


def test_every_dashboard_panel_returns_data_after_a_short_load(monitoring, gateway_url, api_key):
    from tasks import dashboard

    headers = {"Authorization": f"Bearer {api_key}"}
    # least_conn takes turns between idle engines: four streams, then four plain requests.
    for stream in (True,) * 4 + (False,) * 4:
        with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", headers=headers, timeout=60,
                          json={"model": MODEL, "max_tokens": 8, "stream": stream,
                                "messages": [{"role": "user", "content": "Say hi."}]}) as response:
            response.read()
    for name, _ in monitoring["groups"]["inference"]:
        lab_host(name).run("dd if=/dev/zero of=/var/tmp/io-probe bs=1M count=8 oflag=direct; rm -f /var/tmp/io-probe")
    roles = {}
    for role, group in (("engine", "inference"), ("gateway", "gateway")):
        for name, _ in monitoring["groups"][group]:
            roles.setdefault(name, {"node"}).add(role)

    def empty_panels():
        missing = []
        for node, node_roles in roles.items():
            for query in dashboard.queries(node_roles):
                expr = query.replace("$node", node).replace("$__rate_interval", "2m")
                answer = httpx.get(f"{monitoring['prometheus']}/api/v1/query", params={"query": expr}, timeout=10).json()
                assert answer["status"] == "success", (expr, answer)
                if not answer["data"]["result"]:
                    missing.append(f"{node}: {expr}")
        return missing

    # On a timeout, the panels still empty are in the message.
    wait_until(empty_panels, 120, "every dashboard panel to return data", interval=5,
               ready=lambda missing: not missing)
