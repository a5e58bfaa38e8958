"""Roles converge both ways. The alternative scenario's gateway and monitoring move from its second
host to its first (a change of the inventory and a re-deploy), then back: each time the host that
left the roles answers nothing of them and keeps none of their services, configs or secrets, and
the host that took them serves them. Runs after test_80, whose hosts it reuses."""

import json
import socket
import ssl

import httpx
import pytest

from lab.waiting import wait_until
from tasks import gateway, grafana, monitoring
from tasks.settings import resolve
from tests.lab.harness import ALTERNATIVE_INVENTORY, changed_operations, deployed, http_from, inventory_hosts, lab_host

pytestmark = pytest.mark.lab
MOVED_INVENTORY = "inventory/lab_alternative_moved.py"
ROLE_UNITS = ("nginx", "prometheus", "prometheus-alertmanager", "mtail", "prometheus-nginx-exporter")
# What the roles leave on a host: the site, the keys and TLS key, the alert rules and configs.
ROLE_FILES = (gateway.CONF_PATH, gateway.PRIVATE_DIR, monitoring.RULES_FILE, monitoring.PROMETHEUS_CONFIG,
              monitoring.ALERTMANAGER_CONFIG, grafana.ENVIRONMENT_FILE)


def _roles(inventory: str) -> dict:
    groups = inventory_hosts(inventory)
    (name, data), = groups["gateway"]
    (other, _), = [(h, d) for h, d in groups["inference"] if h != name]
    return {"holder": name, "address": data["ssh_hostname"], "left": other, "data": data,
            "left_address": dict(groups["inference"])[other]["ssh_hostname"]}


def _connects(address: str, port: int) -> bool:
    with socket.socket() as client:
        client.settimeout(5)
        return client.connect_ex((address, port)) == 0


def _assert_left_the_roles(roles: dict) -> None:
    host, data = lab_host(roles["left"]), roles["data"]
    states = {unit: host.run(f"systemctl is-active {unit}").stdout.strip() for unit in ROLE_UNITS}
    assert set(states.values()) <= {"inactive", "failed", "unknown"}, states
    enabled = {unit: host.run(f"systemctl is-enabled {unit}").stdout.strip() for unit in ROLE_UNITS}
    assert "enabled" not in enabled.values(), enabled
    left_over = [path for path in ROLE_FILES if host.file(path).exists]
    assert left_over == [], left_over
    for port in (data["gateway_port"], data["gateway_tls_port"]):
        assert not _connects(roles["left_address"], port), f"{roles['left']}:{port} still answers"
    listening = host.check_output("ss -Htln '( sport = :9090 or sport = :9093 or sport = :3000 )'")
    assert listening == "", listening
    # Its engine serves on: the inference role stayed.
    assert host.run("systemctl is-active nas-ai-engine").stdout.strip() == "active"


def _assert_holds_the_roles(roles: dict) -> None:
    host, data = lab_host(roles["holder"]), roles["data"]
    certificate = host.check_output(f"cat {gateway.SELF_SIGNED['certificate']}")
    context = ssl.create_default_context(cadata=certificate)
    context.check_hostname = False
    key = data["gateway_api_keys"]["alice"]["key"]
    with httpx.Client(base_url=f"https://{roles['address']}:{data['gateway_tls_port']}/v1", timeout=120,
                      verify=context) as client:
        for _ in range(2):  # least_conn: both engines, each reachable from the new gateway
            answer = client.post("/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                 json={"model": resolve(roles["holder"], data).model_name, "max_tokens": 4,
                                       "messages": [{"role": "user", "content": "Say hello."}]})
            assert answer.status_code == 200, answer.text

    def targets():
        status, body = http_from(host, "http://127.0.0.1:9090/api/v1/targets")
        assert status == 200, body
        return {(t["labels"]["job"], t["labels"].get("node")): t["health"] for t in json.loads(body)["data"]["activeTargets"]}

    hosts = {roles["holder"], roles["left"]}
    expected = {("node", h) for h in hosts} | {("engine", h) for h in hosts} | \
        {("nginx", roles["holder"]), ("gateway", roles["holder"])}
    found = wait_until(targets, 90, f"every target scraped from {roles['holder']}", interval=5,
                       ready=lambda t: set(t.values()) == {"up"} and expected <= set(t))
    # The old gateway's exporters are no target any more.
    assert {target for target in found if target[0] in ("nginx", "gateway")} == \
        {("nginx", roles["holder"]), ("gateway", roles["holder"])}, found


def test_gateway_and_monitoring_move_to_the_first_host(alternative):
    deployed(MOVED_INVENTORY, who="role move: gateway and monitoring to the first host")
    roles = _roles(MOVED_INVENTORY)
    _assert_left_the_roles(roles)
    _assert_holds_the_roles(roles)


def test_and_back_to_the_second_host(alternative):
    deployed(ALTERNATIVE_INVENTORY, who="role move: gateway and monitoring back to the second host")
    roles = _roles(ALTERNATIVE_INVENTORY)
    _assert_left_the_roles(roles)
    _assert_holds_the_roles(roles)


def test_a_second_deploy_after_the_moves_reports_no_changes(alternative):
    """Leaving a role happens once: the files it looks for are gone."""
    result = deployed(ALTERNATIVE_INVENTORY, who="role move: second deploy, nothing changed")
    output = result.stdout + result.stderr
    assert changed_operations(output) == 0, output[-4000:]
