"""What the deploy left on each host, checked with testinfra, for both scenarios: the default lab
(inventory/lab.py) and the alternative one (inventory/lab_alternative.py: other roles, engines,
ports, store and config directory). Every value a check expects comes from the scenario's
inventory, resolved as the deploy resolves it."""

import json
import re
import shlex
import urllib.error
import urllib.request

import pytest

from tasks import gateway, secrets
from tasks.monitoring import ALERTMANAGER_ADDRESS, PROMETHEUS_ADDRESS
from tasks.settings import BUNDLED_MODEL
from tests.lab.harness import deployed, http_from, lab_host

pytestmark = pytest.mark.lab


# The lab inventories have two inference hosts each; which they are comes from the inventory.
@pytest.fixture(params=[0, 1], ids=["first-host", "second-host"])
def node(request, scenario):
    name = scenario.hosts[request.param]
    return name, lab_host(name), scenario.settings[name]


def test_services_active_and_enabled(node, scenario):
    name, host, _ = node
    for unit in ("nas-ai-engine", "nas-ai-firewall", "prometheus-node-exporter"):
        service = host.service(unit)
        assert service.is_running and service.is_enabled, f"{name}: {unit}\n" + \
            host.run(f"journalctl -u {unit} -n 50 --no-pager").stdout
    # Each role's services run on the hosts of that role alone.
    assert host.service("nginx").is_running == (name in scenario.gateways), name
    for unit in ("prometheus", "prometheus-alertmanager"):
        assert host.service(unit).is_running == (name in scenario.monitoring), (name, unit)


def test_engine_and_gateway_listen_only_where_they_should(node, scenario):
    name, host, settings = node
    port = settings.engine_port
    # Loopback when the host's own gateway and Prometheus are its only callers.
    alone = scenario.gateways == [name] and scenario.monitoring == [name]
    expected = f"127.0.0.1:{port}" if alone else f"{scenario.addresses[name]}:{port}"
    listening = host.check_output(f"ss -Htln 'sport = :{port}'")
    assert expected in listening and f"0.0.0.0:{port}" not in listening and f"*:{port}" not in listening
    gateway_sockets = host.check_output(f"ss -Htln 'sport = :{settings.gateway_port}'")
    assert (f"0.0.0.0:{settings.gateway_port}" in gateway_sockets) == (name in scenario.gateways)
    tls_sockets = host.check_output(f"ss -Htln 'sport = :{settings.gateway_tls_port}'")
    tls_on = name in scenario.gateways and settings.gateway_tls is not None
    assert (f"0.0.0.0:{settings.gateway_tls_port}" in tls_sockets) == tls_on, tls_sockets


def test_slice_limits_and_unit_properties(node):
    _name, host, settings = node
    slice_props = host.check_output("systemctl show nasai.slice -p MemoryMax -p MemoryHigh -p CPUQuotaPerSecUSec "
                                    "-p CPUWeight")
    assert f"MemoryMax={settings.service_memory_max}" in slice_props
    assert f"MemoryHigh={int(settings.service_memory_max * 0.9) // 2**20 * 2**20}" in slice_props
    assert "CPUQuotaPerSecUSec=2s" in slice_props  # 2 cores: both
    assert f"CPUWeight={settings.service_cpu_weight}" in slice_props
    unit = host.check_output("systemctl show nas-ai-engine -p Slice -p User -p Restart -p OOMPolicy -p NRestarts")
    for expected in ("Slice=nasai.slice", f"User={settings.system_user}", "Restart=on-failure", "OOMPolicy=kill",
                     "NRestarts=0"):
        assert expected in unit, unit


def test_engine_unit_security_score(node):
    name, host, _ = node
    result = host.run("systemd-analyze security --no-pager nas-ai-engine.service")
    score = float(re.search(r"Overall exposure level for nas-ai-engine.service: ([\d.]+)", result.stdout).group(1))
    print(f"{name}: systemd-analyze security exposure {score}")
    assert score <= 2.0, result.stdout[-3000:]


def test_sysctl_applied_and_persisted(node):
    _, host, settings = node
    persisted = host.file("/etc/sysctl.d/60-nas-ai.conf").content_string
    for key, value in (("vm.swappiness", settings.system_swappiness),
                       ("net.ipv4.tcp_keepalive_time", settings.system_tcp_keepalive_s),
                       ("net.ipv4.tcp_keepalive_intvl", 5), ("net.ipv4.tcp_keepalive_probes", 3)):
        assert host.sysctl(key) == value, key
        assert f"{key} = {value}" in persisted, key


def test_system_user_cannot_log_in(node):
    _, host, settings = node
    user = host.user(settings.system_user)
    assert user.exists and user.shell == "/usr/sbin/nologin"


def test_file_owners_and_modes(node):
    _, host, settings = node
    user, store = settings.system_user, settings.model_store_dir
    expected = [
        (store, "root", user, 0o750),
        (settings.system_config_dir, "root", user, 0o750),
        (f"{settings.system_config_dir}/engine.json", "root", user, 0o640),
        (settings.system_install_dir, "root", "root", 0o755),
        (f"{store}/{settings.model_name}/{BUNDLED_MODEL['sha256']}.gguf", "root", user, 0o640),
    ]
    found = [(path, host.file(path).user, host.file(path).group, host.file(path).mode) for path, *_ in expected]
    assert found == expected


def test_model_verified_and_selected(node):
    _, host, settings = node
    store = f"{settings.model_store_dir}/{settings.model_name}"
    assert host.file(f"{store}/current").linked_to == f"{store}/{BUNDLED_MODEL['sha256']}.gguf"
    assert host.file(f"{store}/current").sha256sum == BUNDLED_MODEL["sha256"]


def test_gateway_secrets_are_private(scenario):
    name = scenario.gateways[0]
    host, settings = lab_host(name), scenario.settings[name]
    keys = host.file("/etc/nginx/nas-ai/api-keys.map")
    assert (keys.user, keys.mode) == ("root", 0o600)
    logs = host.check_output("cat /var/log/nginx/*.log || true")
    for client in gateway.clients(secrets.api_keys(settings.gateway_api_keys), settings):
        assert client.key not in logs and client.key not in host.check_output(f"cat {gateway.CONF_PATH}")


def _remote_engine(scenario) -> tuple[str, int]:
    """The address and port of an engine on a host that is neither gateway nor monitoring."""
    name = next(n for n in scenario.hosts if n not in scenario.gateways + scenario.monitoring)
    return scenario.addresses[name], scenario.settings[name].engine_port


def test_engine_port_is_closed_to_hosts_that_do_not_call_it(scenario):
    address, port = _remote_engine(scenario)
    with pytest.raises(urllib.error.URLError) as refused:  # the controller calls no engine
        urllib.request.urlopen(f"http://{address}:{port}/health", timeout=5)
    assert "refused" in str(refused.value).lower() or "reset" in str(refused.value).lower()
    assert http_from(lab_host(scenario.gateways[0]), f"http://{address}:{port}/health")[0] == 200


def test_prometheus_and_alertmanager_answer_on_loopback_alone(scenario):
    """They have no authentication: nothing on the LAN reaches them, not even their cluster port."""
    monitor = scenario.monitoring[0]
    # TCP and UDP: Alertmanager's cluster port speaks both.
    listening = lab_host(monitor).check_output("ss -Htuln '( sport = :9090 or sport = :9093 or sport = :9094 )'")
    addresses = sorted(line.split()[4] for line in listening.splitlines())
    assert addresses == sorted([PROMETHEUS_ADDRESS, ALERTMANAGER_ADDRESS]), listening
    other = next(name for name in scenario.hosts if name != monitor)
    probe = ("import socket\n"
             f"for port in (9090, 9093, 9094):\n"
             f"    print(port, socket.socket().connect_ex(({scenario.addresses[monitor]!r}, port)))\n")
    refused = lab_host(other).check_output(f"python3 -c {shlex.quote(probe)}")
    assert all(line.split()[1] != "0" for line in refused.splitlines()), refused


def test_engine_refuses_requests_without_the_backend_key(scenario):
    gateway_host = lab_host(scenario.gateways[0])
    address, port = _remote_engine(scenario)
    url = f"http://{address}:{port}/v1/models"
    assert http_from(gateway_host, url)[0] == 401
    status, body = http_from(gateway_host, url, {"Authorization": f"Bearer {secrets.backend_key()}"})
    assert status == 200 and json.loads(body)["data"][0]["id"] == "smollm2-135m-instruct"


def test_the_engine_front_serves_its_allow_list_alone(scenario):
    """Behind the gateway too: a caller with the backend key gets a JSON 404 for every other path
    of either engine, so nothing generates around the guard."""
    gateway_host = lab_host(scenario.gateways[0])
    address, port = _remote_engine(scenario)
    key = {"Authorization": f"Bearer {secrets.backend_key()}"}
    for path in ("/props", "/slots", "/v1/messages", "/v1/responses", "/completion", "/tokenize",
                 "/v1/engines/copilot-codex/completions", "/v1/embeddings"):
        status, body = http_from(gateway_host, f"http://{address}:{port}{path}", key)
        assert (status, json.loads(body)["error"]["code"]) == (404, "not_found"), (path, body)


def test_the_engine_stops_with_its_firewall(scenario):
    """No engine without its firewall table: stopping the firewall's unit stops the engine."""
    name = scenario.hosts[-1]
    host = lab_host(name)
    assert "BindsTo=nas-ai-firewall.service" in host.check_output("systemctl show -p BindsTo nas-ai-engine")
    try:
        host.check_output("systemctl stop nas-ai-firewall")
        assert host.run("systemctl is-active nas-ai-engine").stdout.strip() in ("inactive", "deactivating")
        assert host.run("nft list table inet nas_ai").rc != 0
    finally:
        # Back as the deploy left it: the table, then the engine (active once it answers).
        host.check_output("systemctl start nas-ai-firewall nas-ai-engine")
    assert host.service("nas-ai-engine").is_running


def test_a_flushed_ruleset_comes_back_with_the_next_deploy(scenario):
    """`nft flush ruleset` (or a restart of nftables.service) removes the table while its unit stays
    active: the next deploy sees the table gone and loads it again."""
    if scenario.name != "default":
        pytest.skip("one scenario is enough: the deploy's check is the same")
    address, port = _remote_engine(scenario)
    name = next(n for n in scenario.hosts if scenario.addresses[n] == address)
    host = lab_host(name)
    host.check_output("nft flush ruleset")
    assert host.run("nft list table inet nas_ai").rc != 0
    assert host.service("nas-ai-firewall").is_running  # the unit cannot tell
    deployed("inventory/lab.py", "--limit", name)
    assert host.run("nft list table inet nas_ai").rc == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{address}:{port}/health", timeout=5)
