"""The alternative scenario (inventory/lab_alternative.py) deployed from scratch on two fresh
containers: the second host is the gateway and the monitoring host, each host runs a different
engine, the model store, ports and config directory are not the defaults, TLS is on and three
clients have limits of their own. Every value the checks expect is read from that inventory."""

import json
import ssl
import threading

import httpx
import pytest

from lab.waiting import wait_until
from tasks.settings import BUNDLED_MODEL, resolve
from tests.lab.harness import ALTERNATIVE_INVENTORY, changed_operations, deployed, http_from, lab_host

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def stack(alternative):
    """The deployed alternative scenario (conftest), with what these tests read from it."""
    groups = alternative["groups"]
    (gateway_name, gateway_data), = groups["gateway"]
    return {**alternative, "settings": {name: resolve(name, data) for name, data in groups["inference"]},
            "gateway": gateway_name, "gateway_address": gateway_data["ssh_hostname"],
            "model": resolve(gateway_name, gateway_data).model_name,
            "keys": {name: entry["key"] for name, entry in gateway_data["gateway_api_keys"].items()}}


@pytest.fixture(scope="module")
def certificate(stack, tmp_path_factory):
    """The certificate the deploy generated for the gateway, its key private."""
    path = tmp_path_factory.mktemp("tls") / "gateway.crt"
    gateway = lab_host(stack["gateway"])
    assert gateway.file("/etc/nginx/nas-ai/self-signed.key").mode == 0o600
    path.write_text(gateway.check_output("cat /etc/nginx/nas-ai/self-signed.crt"))
    return path


@pytest.fixture
def https(stack, certificate):
    """A client of the gateway's TLS port that trusts that certificate; one per test, so no test
    inherits another's open connections."""
    port = stack["settings"][stack["gateway"]].gateway_tls_port
    with httpx.Client(base_url=f"https://{stack['gateway_address']}:{port}/v1", timeout=120,
                      verify=ssl.create_default_context(cafile=str(certificate))) as client:
        yield client


def _chat(https, key: str, model: str, **extra) -> httpx.Response:
    return https.post("/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}],
                            **extra})


def test_second_deploy_reports_no_changes(stack):
    output = stack["second"].stdout + stack["second"].stderr
    assert changed_operations(output) == 0, output[-4000:]


def test_each_engine_serves_its_own_server_from_the_moved_store(stack):
    for name, settings in stack["settings"].items():
        host = lab_host(name)
        config = json.loads(host.check_output(f"cat {settings.system_config_dir}/engine.json"))
        assert (config["server"], config["port"]) == (settings.engine_server, settings.engine_port)
        model = json.loads(host.check_output(f"cat {settings.system_config_dir}/model.json"))
        assert model["path"] == f"{settings.model_store_dir}/{settings.model_name}/{BUNDLED_MODEL['sha256']}.gguf"
        assert host.file(f"{settings.model_store_dir}/{settings.model_name}/current").linked_to == model["path"]
        status, body = http_from(host, f"http://{config['host']}:{config['port']}/health")
        assert status == 200, body
        assert (json.loads(body)["server"], json.loads(body)["sha256"]) == (settings.engine_server, BUNDLED_MODEL["sha256"])
        processes = host.check_output(f"ps -u {settings.system_user} -o args=").splitlines()
        if settings.engine_server == "llama-cpp-python":
            assert sum("nas_ai_engine worker" in p for p in processes) == settings.engine_workers, processes
        else:
            assert sum("llama-server" in p for p in processes) == 1, processes


def test_with_tls_the_plain_port_serves_no_api(stack):
    """An API request on the plain port is refused with the TLS URL to use; nothing is proxied."""
    settings = stack["settings"][stack["gateway"]]
    response = httpx.post(f"http://{stack['gateway_address']}:{settings.gateway_port}/v1/chat/completions", timeout=10,
                          headers={"Authorization": f"Bearer {stack['keys']['alice']}"}, json={})
    assert response.status_code == 403, response.text
    assert f"https://{stack['gateway_address']}:{settings.gateway_tls_port}/v1/chat/completions" in response.text


def test_chat_over_tls_reaches_both_engines(stack, https):
    for _ in range(4):
        response = _chat(https, stack["keys"]["alice"], stack["model"])
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"].strip()
    # The gateway's access log names the engine (upstream) of each answer, and the client.
    log = lab_host(stack["gateway"]).check_output("cat /var/log/nginx/nas-ai.access.log")
    upstreams = {entry["upstream"] for entry in map(json.loads, log.splitlines())
                 if entry["client"] == "alice" and entry["status"] == 200}
    assert len(upstreams) == len(stack["settings"]), upstreams


def test_a_client_with_its_own_rate_gets_429_while_the_others_go_on(stack, https):
    """bob: 2 requests a minute, no burst. His second request at once is refused with the
    Retry-After of his own rate; alice, on the gateway's rate, is served."""
    assert _chat(https, stack["keys"]["bob"], stack["model"]).status_code == 200
    refused = _chat(https, stack["keys"]["bob"], stack["model"])
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "30"
    assert _chat(https, stack["keys"]["alice"], stack["model"]).status_code == 200


def test_a_client_with_one_request_at_a_time_gets_429_for_a_second(stack, https):
    """carol: one request in flight. While her first streamed answer is still being generated, a
    second one is refused; alice is served meanwhile."""
    streaming, done, outcome = threading.Event(), threading.Event(), {}

    def first_request():
        try:
            with https.stream("POST", "/chat/completions", headers={"Authorization": f"Bearer {stack['keys']['carol']}"},
                              json={"model": stack["model"], "max_tokens": 1000, "stream": True,
                                    # No end of text (SmolLM2's ids 0 and 2): the answer runs its whole
                                    # length, seconds even on llama-server, so nginx still counts it when
                                    # the second request arrives.
                                    "logit_bias": {"0": -100, "2": -100},
                                    "messages": [{"role": "user", "content": "Tell a long story."}]}) as response:
                outcome["status"] = response.status_code
                lines = response.iter_lines()
                outcome["first line"] = next(lines)
                streaming.set()
                done.wait(120)  # the answer is still being generated: nginx counts the request
                outcome["lines"] = 1 + sum(1 for _ in lines)
        except Exception as error:  # reported by the test, not lost in the thread
            outcome["error"] = error
            streaming.set()

    holder = threading.Thread(target=first_request)
    holder.start()
    try:
        assert streaming.wait(120), "the first streamed answer never started"
        assert outcome.get("status") == 200 and outcome.get("first line", "").startswith("data:"), outcome
        second = _chat(https, stack["keys"]["carol"], stack["model"])
        assert second.status_code == 429, (second.text, outcome)
        assert _chat(https, stack["keys"]["alice"], stack["model"]).status_code == 200
    finally:
        done.set()
        holder.join(timeout=180)
    assert "error" not in outcome and outcome["lines"] > 100, outcome  # the whole answer came


def test_prometheus_on_the_second_host_scrapes_every_target(stack):
    gateway = lab_host(stack["gateway"])

    def targets():
        status, body = http_from(gateway, "http://127.0.0.1:9090/api/v1/targets")
        assert status == 200, body
        return {(t["labels"]["job"], t["labels"].get("node")): t["health"] for t in json.loads(body)["data"]["activeTargets"]}

    hosts = set(stack["settings"])
    expected = {("node", h) for h in hosts} | {("engine", h) for h in hosts} | \
        {("nginx", stack["gateway"]), ("gateway", stack["gateway"])}
    found = wait_until(targets, 90, "every target of the alternative scenario up", interval=5,
                       ready=lambda t: set(t.values()) == {"up"} and expected <= set(t))
    assert expected <= set(found)


def test_switching_the_engine_leaves_nothing_of_the_previous_one(stack, https):
    """Day 2 on the second host: from llama-server to llama-cpp-python with one worker (the front
    and one worker process, which a model swap replaces), that host alone. Last of the module: it
    changes the scenario."""
    name = stack["gateway"]
    settings = stack["settings"][name]
    assert settings.engine_server == "llama-server"
    deployed(ALTERNATIVE_INVENTORY, "--limit", name, "--data", "engine_server=llama-cpp-python",
             "--data", "engine_workers=1")
    host = lab_host(name)
    config = json.loads(host.check_output(f"cat {settings.system_config_dir}/engine.json"))
    status, body = http_from(host, f"http://{config['host']}:{config['port']}/health")
    assert (status, json.loads(body)["server"]) == (200, "llama-cpp-python"), body
    processes = host.check_output(f"ps -u {settings.system_user} -o args=").splitlines()
    assert len(processes) == 2, processes  # no llama-server left
    assert "nas_ai_engine serve" in processes[0] and "nas_ai_engine worker" in processes[1], processes
    for _ in range(2):  # the gateway's least_conn reaches both engines
        assert _chat(https, stack["keys"]["alice"], stack["model"]).status_code == 200
