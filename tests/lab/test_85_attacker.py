"""An attacker on the NAS's LAN, for both scenarios (both engines): a scan of every TCP port of
every host, the gateway's paths and methods without a key, keys that differ in case alone, key
guessing, and hostile bodies sent with a valid key. Nothing answers but SSH and the gateway,
nothing is served without the exact key, every hostile body gets a JSON 4xx, and every engine
lives on: same main PID, no restart, still answering.

Tests run in file order, all of them for one scenario and then for the other: the engines' PIDs
are read before the first and compared after the last."""

import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest

from tasks import gateway, secrets
from tasks.settings import Settings, nginx_size_bytes
from tests.lab.harness import http_from, lab_host

# Every test asks for the engines' state before it, so the PIDs are read before the first attack
# whichever tests are selected.
pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("engines_before")]

SSH_PORT = 22
ENGINE_UNIT = "nas-ai-engine"

# Connects to every TCP port of each address given, 500 connections at a time: a refusal or a
# reset is a closed port, no answer within a second a silent one. Prints {address: {"open",
# "silent", "seconds"}} as JSON. Self-contained (Python 3.11's standard library): the controller
# and the lab hosts run the same text.
PORT_SCAN = """
import asyncio, json, socket, sys, time

async def scan(address, concurrency=500, timeout=1.0):
    loop, ports, found = asyncio.get_running_loop(), iter(range(1, 65536)), {"open": [], "silent": 0}

    async def prober():
        for port in ports:
            with socket.socket() as sock:
                sock.setblocking(False)
                try:
                    async with asyncio.timeout(timeout):
                        await loop.sock_connect(sock, (address, port))
                except TimeoutError:
                    found["silent"] += 1
                except OSError:
                    pass
                else:
                    found["open"].append(port)

    started = time.monotonic()
    await asyncio.gather(*(prober() for _ in range(concurrency)))
    return {"open": sorted(found["open"]), "silent": found["silent"], "seconds": round(time.monotonic() - started, 1)}

print(json.dumps({address: asyncio.run(scan(address)) for address in sys.argv[1:]}))
"""


def _expected_open_ports(scenario, name: str) -> set[int]:
    """What a host shows an address that calls no engine and is no Prometheus: SSH, and the
    gateway's ports on a gateway. The engine answers the gateways and Prometheus alone, the
    exporters Prometheus alone; nginx's status page, Prometheus and Alertmanager loopback alone."""
    settings = scenario.settings[name]
    ports = {SSH_PORT}
    if name in scenario.gateways:
        ports.add(settings.gateway_port)
        if settings.gateway_tls:
            ports.add(settings.gateway_tls_port)
    return ports


def _print_scan(scenario, source: str, targets: dict[str, str], found: dict) -> None:
    for name, address in targets.items():
        result = found[address]
        closed = 65535 - len(result["open"]) - result["silent"]
        print(f"port scan [{scenario.name}] from {source} to {name} ({address}): open {result['open']}, "
              f"{closed} refused or reset, {result['silent']} unanswered, {result['seconds']} s")


def test_the_controller_finds_ssh_and_the_gateway_alone(scenario):
    """The controller is on the lab's bridge but is no lab host: no engine's firewall lets it in."""
    targets = {name: scenario.addresses[name] for name in scenario.hosts}
    scan = subprocess.run([sys.executable, "-c", PORT_SCAN, *targets.values()], check=False, capture_output=True,
                          text=True)
    assert scan.returncode == 0, scan.stderr
    found = json.loads(scan.stdout)
    _print_scan(scenario, "the controller", targets, found)
    assert {name: set(found[address]["open"]) for name, address in targets.items()} == \
        {name: _expected_open_ports(scenario, name) for name in targets}


def test_a_host_that_calls_no_engine_finds_ssh_and_the_gateway_alone(scenario):
    """A lab host that is neither gateway nor monitoring is a neighbour like any other: the other
    hosts' engines and exporters are closed to it. Its own engine lets it in (the unit's
    readiness probe calls its LAN address), so it scans the others alone."""
    callers = set(scenario.gateways) | set(scenario.monitoring)
    neighbours = [name for name in scenario.hosts if name not in callers]
    if not neighbours:
        pytest.skip(f"every host of the {scenario.name} scenario is a gateway or a monitoring host")
    scanner = neighbours[0]
    targets = {name: scenario.addresses[name] for name in scenario.hosts if name != scanner}
    scan = lab_host(scanner).run(f"python3 -c {shlex.quote(PORT_SCAN)} {' '.join(targets.values())}")
    assert scan.rc == 0, scan.stderr
    found = json.loads(scan.stdout)
    _print_scan(scenario, scanner, targets, found)
    assert {name: set(found[address]["open"]) for name, address in targets.items()} == \
        {name: _expected_open_ports(scenario, name) for name in targets}


@dataclass(frozen=True)
class GatewayTarget:
    url: str
    settings: Settings
    client: gateway.Client  # a real client: its key and its limits
    model: str


@pytest.fixture(scope="module")
def target(scenario) -> GatewayTarget:
    """The scenario's gateway as a client reaches it (its TLS port when TLS is on), and the client
    with the most generous limits (alice in the alternative scenario)."""
    name = scenario.gateways[0]
    settings, address = scenario.settings[name], scenario.addresses[name]
    url = f"https://{address}:{settings.gateway_tls_port}" if settings.gateway_tls else \
        f"http://{address}:{settings.gateway_port}"
    clients = gateway.clients(secrets.api_keys(settings.gateway_api_keys), settings)
    client = max(clients, key=lambda c: (c.rate_per_minute, c.rate_burst, c.concurrent))
    return GatewayTarget(url=url, settings=settings, client=client, model=settings.model_name)


@pytest.fixture
def http(target):
    # An attacker has no copy of the self-signed certificate: it does not verify it either.
    with httpx.Client(base_url=target.url, timeout=120, verify=False) as client:
        yield client


def _engine_states(scenario) -> dict[str, dict[str, str]]:
    states = {}
    for name in scenario.hosts:
        shown = lab_host(name).check_output(f"systemctl show {ENGINE_UNIT} -p MainPID -p NRestarts -p ActiveState")
        states[name] = dict(line.split("=", 1) for line in shown.splitlines())
    return states


def _refused_by_each_engine(scenario) -> dict[str, float]:
    """Each engine's count of the 400s its guard answered, read on its own host."""
    counts = {}
    for name in scenario.hosts:
        host = lab_host(name)
        config = json.loads(host.check_output(f"cat {scenario.settings[name].system_config_dir}/engine.json"))
        status, body = http_from(host, f"http://{config['host']}:{config['port']}/metrics")
        assert status == 200, body
        counts[name] = sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                           if line.startswith("nas_ai_engine_requests_total{") and 'status="400"' in line)
    return counts


@pytest.fixture(scope="module")
def engines_before(scenario) -> dict:
    states = _engine_states(scenario)
    # A stopped engine has no PID to compare: the attack would prove nothing.
    assert all(s["ActiveState"] == "active" and s["MainPID"] != "0" for s in states.values()), states
    return {"states": states, "refused": _refused_by_each_engine(scenario)}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _is_json_error(response: httpx.Response) -> bool:
    try:
        return isinstance(response.json().get("error"), dict)
    except (ValueError, AttributeError):
        return False


def test_keys_that_differ_in_case_alone_are_refused(target, http):
    """nginx compares its map strings without regard to case: the gateway's keys must not."""
    key = target.client.key
    variants = {"upper": key.upper(), "lower": key.lower(), "swapped": key.swapcase()}
    variants = {how: variant for how, variant in variants.items() if variant != key}
    assert "upper" in variants and "swapped" in variants  # the keys' `sk-` prefix is lower case
    statuses = {how: http.get("/v1/models", headers=_bearer(variant)).status_code for how, variant in variants.items()}
    # 429: this address's budget of failed authentications ran out, a refusal too.
    assert set(statuses.values()) <= {401, 429}, statuses
    # The same request with the exact key is served: the refusals were the case's.
    assert http.get("/v1/models", headers=_bearer(key)).status_code == 200


METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS")
# The OpenAI paths the stack serves, those it does not, and llama-server's and llama-cpp-python's own.
PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/messages", "/v1/responses", "/v1/embeddings",
         "/v1/engines/copilot-codex/completions", "/completion", "/props", "/slots", "/metrics", "/health", "/")


def test_without_a_key_only_health_answers(scenario, http):
    answers = {(method, path): http.request(method, path) for path in PATHS for method in METHODS}
    for path in PATHS:
        print(f"without a key [{scenario.name}] {path}: "
              + " ".join(f"{method} {answers[method, path].status_code}" for method in METHODS))
    wrong = {}
    for (method, path), response in answers.items():
        if path == "/health":
            if response.status_code != 200:
                wrong[f"{method} {path}"] = (response.status_code, response.text[:200])
        # 429: the allow-listed paths count failed authentications per address; the sweep sends
        # more of them than the burst.
        elif response.status_code not in (401, 404, 429) or not _is_json_error(response):
            wrong[f"{method} {path}"] = (response.status_code, response.text[:200])
    assert not wrong, wrong


def test_key_guessing_ends_in_429_and_the_real_client_is_served(target, http):
    """The sweep before has likely spent this address's budget: the first guess may be the 429."""
    settings = target.settings
    statuses = []
    for attempt in range(settings.gateway_auth_failure_burst + 5):
        response = http.get("/v1/models", headers=_bearer(f"sk-guess-{attempt:024d}"))
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) <= {401}, statuses
    # One request's worth of the failed-authentication rate, and a message that blames the key.
    assert response.headers.get("retry-after") == str(max(1, math.ceil(60 / settings.gateway_auth_failures_per_minute)))
    assert "without a valid API key" in response.json()["error"]["message"]
    # Guesses are counted per address, never against a client: one with its key is not slowed.
    assert http.get("/v1/models", headers=_bearer(target.client.key)).status_code == 200


def _chat(model: str, **fields) -> dict:
    return {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}], **fields}


def _nested_list(depth: int) -> list:
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _json(request) -> bytes:
    # json.dumps writes a lone surrogate as its \ud800 escape, as an attacker would send it.
    return json.dumps(request).encode()


# name -> (the body, from the model and the gateway's body limit in bytes; the status expected)
HOSTILE_BODIES = {
    "open-brackets": (lambda model, limit: b"[" * min(100_000, limit), 400),
    "200-levels-inside-an-object": (lambda model, limit: _json(_chat(model, metadata=_nested_list(200))), 400),
    "lone-surrogate-in-grammar": (lambda model, limit: _json(_chat(model, grammar='root ::= "\ud800"')), 400),
    "lone-surrogate-in-content": (
        lambda model, limit: _json(_chat(model, messages=[{"role": "user", "content": "hi \ud800"}])), 400),
    "left-recursive-grammar": (lambda model, limit: _json(_chat(model, grammar='root ::= root "a" | "a"')), 400),
    # Parsed by llama.cpp; llama-cpp-python aborts when generation reaches it.
    "class-matching-nothing": (lambda model, limit: _json(_chat(model, grammar="root ::= [^\\x00-\\U0010FFFF]")), 400),
    "token-id-outside-the-vocabulary": (lambda model, limit: _json(_chat(model, grammar="root ::= <[99999]>")), 400),
    "five-choices": (lambda model, limit: _json(_chat(model, n=5)), 400),
    "20000-logit-biases": (lambda model, limit: _json(_chat(model, logit_bias={str(t): 1 for t in range(20_000)})), 400),
    "1000-top-logprobs": (lambda model, limit: _json(_chat(model, logprobs=True, top_logprobs=1000)), 400),
    "1000-n-probs": (lambda model, limit: _json(_chat(model, n_probs=1000)), 400),
    "a-billion-tokens": (lambda model, limit: _json(_chat(model, max_tokens=10**9)), 400),
    "negative-dry-allowed-length": (lambda model, limit: _json(_chat(model, dry_allowed_length=-1)), 400),
    "not-json": (lambda model, limit: b"this is not JSON: {", 400),
    "a-json-array": (lambda model, limit: _json([_chat(model)]), 400),
    "above-the-body-limit": (
        lambda model, limit: _json(_chat(model, messages=[{"role": "user", "content": "x" * limit}])), 413),
    # llama-server's own name for n.
    "four-completions-by-n_cmpl": (lambda model, limit: _json(_chat(model, n_cmpl=4)), 400),
    "nan-temperature": (lambda model, limit: _json(_chat(model, temperature=float("nan"))), 400),
    # A surrogate written as UTF-8 bytes, not as a \u escape: no UTF-8 decoder takes it.
    "surrogate-as-raw-bytes": (
        lambda model, limit: _json(_chat(model)).replace(b"Say hello.", b"Say \xed\xa0\x80."), 400),
    # llama-cpp-python turns a schema into a grammar by itself, expanding minItems in memory.
    "schema-with-a-hundred-million-items": (lambda model, limit: _json(_chat(model, response_format={
        "type": "json_object", "schema": {"type": "array", "items": {"type": "string"}, "minItems": 100_000_000}})),
        400),
}
# Hostile to llama-cpp-python alone (its converter would hand llama.cpp a class that matches nothing,
# which aborts it): refused by its guard; llama-server converts the schema itself and answers.
SCHEMA_NO_CHARACTER_MATCHES = {"type": "json_object", "schema": {"type": "string", "pattern": "^[]$"}}
# The completions endpoint: one prompt per request.
HOSTILE_COMPLETIONS = {
    "a-thousand-prompts": (lambda model: {"model": model, "max_tokens": 1, "prompt": ["hi"] * 1000}, 400),
}


@pytest.mark.parametrize("body_name", HOSTILE_BODIES)
def test_a_hostile_body_gets_a_json_4xx(scenario, target, http, body_name):
    build, expected = HOSTILE_BODIES[body_name]
    body = build(target.model, nginx_size_bytes(target.settings.gateway_max_body))
    answers = []
    # least_conn takes idle engines in turn: each engine gets the body once.
    for _ in scenario.hosts:
        # One request's worth of the client's rate between requests: refusals count against it too.
        time.sleep(60 / target.client.rate_per_minute)
        response = http.post("/v1/chat/completions", content=body,
                             headers={**_bearer(target.client.key), "Content-Type": "application/json"})
        answers.append((response.status_code, _is_json_error(response), response.text[:300]))
    print(f"hostile body [{scenario.name}] {body_name}: {[(status, text[:120]) for status, _, text in answers]}")
    assert [(status, is_json) for status, is_json, _ in answers] == [(expected, True)] * len(scenario.hosts), answers


def test_a_schema_only_llama_cpp_python_cannot_take_is_refused_there_and_answered_by_llama_server(
        scenario, target, http):
    servers = [scenario.settings[name].engine_server for name in scenario.hosts]
    answers = []
    for _ in scenario.hosts:  # least_conn: each engine once
        time.sleep(60 / target.client.rate_per_minute)
        response = http.post("/v1/chat/completions", headers=_bearer(target.client.key),
                             json=_chat(target.model, response_format=SCHEMA_NO_CHARACTER_MATCHES))
        answers.append((response.status_code, response.text[:300]))
    expected = {"llama-cpp-python": 400, "llama-server": 200}
    assert sorted(status for status, _ in answers) == sorted(expected[server] for server in servers), (servers, answers)
    assert all("JSON schema" in text for status, text in answers if status == 400), answers


@pytest.mark.parametrize("body_name", HOSTILE_COMPLETIONS)
def test_a_hostile_completion_gets_a_json_4xx(scenario, target, http, body_name):
    build, expected = HOSTILE_COMPLETIONS[body_name]
    answers = []
    for _ in scenario.hosts:
        time.sleep(60 / target.client.rate_per_minute)
        response = http.post("/v1/completions", json=build(target.model), headers=_bearer(target.client.key))
        answers.append((response.status_code, _is_json_error(response), response.text[:300]))
    assert [(status, is_json) for status, is_json, _ in answers] == [(expected, True)] * len(scenario.hosts), answers


def test_every_engine_outlived_the_attack(scenario, engines_before, target, http):
    """Last of the module: the same engine processes as before the first test, never restarted,
    still serving a real chat completion on every engine."""
    assert _engine_states(scenario) == engines_before["states"]
    # Every engine's guard met the hostile bodies, not one engine's alone.
    refused = _refused_by_each_engine(scenario)
    assert all(refused[name] > engines_before["refused"][name] for name in scenario.hosts), \
        (engines_before["refused"], refused)
    for _ in scenario.hosts:  # least_conn: each engine answers one
        time.sleep(60 / target.client.rate_per_minute)
        response = http.post("/v1/chat/completions", headers=_bearer(target.client.key), json=_chat(target.model))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"].strip()
