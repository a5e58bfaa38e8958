"""What the deploy left on each host, checked with testinfra."""

import json
import re
import urllib.error
import urllib.request

import pytest

from tasks import secrets
from tasks.settings import BUNDLED_MODEL
from tests.lab.harness import http_from, lab_host

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def topology(deployment):
    groups = deployment["groups"]
    return {
        "hosts": [name for name, _ in groups["inference"]],
        "gateways": [name for name, _ in groups["gateway"]],
        "addresses": {name: data["ssh_hostname"] for name, data in groups["inference"]},
    }


# The lab inventory has two inference hosts; which they are comes from the inventory.
@pytest.fixture(params=[0, 1], ids=["first-host", "second-host"])
def node(request, topology):
    name = topology["hosts"][request.param]
    return name, lab_host(name)


def test_services_active_and_enabled(node, topology):
    name, host = node
    for unit in ("nas-ai-engine", "nas-ai-firewall"):
        service = host.service(unit)
        assert service.is_running and service.is_enabled, f"{name}: {unit}\n" + \
            host.run(f"journalctl -u {unit} -n 50 --no-pager").stdout
    nginx = host.service("nginx")
    assert nginx.is_running == (name in topology["gateways"])


def test_engine_listens_only_where_the_gateway_reaches_it(node, topology):
    name, host = node
    expected = "127.0.0.1:8080" if topology["gateways"] == [name] else f"{topology['addresses'][name]}:8080"
    listening = host.check_output("ss -Htln 'sport = :8080'")
    assert expected in listening and "0.0.0.0:8080" not in listening and "*:8080" not in listening
    gateway_sockets = host.check_output("ss -Htln 'sport = :80'")
    assert ("0.0.0.0:80" in gateway_sockets) == (name in topology["gateways"])


def test_slice_limits_and_unit_properties(node):
    name, host = node
    slice_props = host.check_output("systemctl show nasai.slice -p MemoryMax -p MemoryHigh -p CPUQuotaPerSecUSec")
    assert f"MemoryMax={6 * 1024**3}" in slice_props
    assert f"MemoryHigh={int(6 * 1024**3 * 0.9) // 2**20 * 2**20}" in slice_props
    assert "CPUQuotaPerSecUSec=2s" in slice_props  # 2 cores: both
    unit = host.check_output("systemctl show nas-ai-engine -p Slice -p User -p Restart -p OOMPolicy -p NRestarts")
    for expected in ("Slice=nasai.slice", "User=nas-ai", "Restart=on-failure", "OOMPolicy=kill", "NRestarts=0"):
        assert expected in unit, unit


def test_engine_unit_security_score(node):
    name, host = node
    result = host.run("systemd-analyze security --no-pager nas-ai-engine.service")
    score = float(re.search(r"Overall exposure level for nas-ai-engine.service: ([\d.]+)", result.stdout).group(1))
    print(f"{name}: systemd-analyze security exposure {score}")
    assert score <= 2.0, result.stdout[-3000:]


def test_sysctl_applied_and_persisted(node):
    _, host = node
    assert host.sysctl("vm.swappiness") == 10
    assert "vm.swappiness = 10" in host.file("/etc/sysctl.d/60-nas-ai.conf").content_string


def test_system_user_cannot_log_in(node):
    _, host = node
    user = host.user("nas-ai")
    assert user.exists and user.shell == "/usr/sbin/nologin"


@pytest.mark.parametrize("path, owner, group, mode", [
    ("/data/models", "root", "nas-ai", 0o750),
    ("/etc/nas-ai", "root", "nas-ai", 0o750),
    ("/etc/nas-ai/engine.json", "root", "nas-ai", 0o640),
    ("/opt/nas-ai", "root", "root", 0o755),
    (f"/data/models/smollm2-135m-instruct/{BUNDLED_MODEL['sha256']}.gguf", "root", "nas-ai", 0o640),
])
def test_file_owners_and_modes(node, path, owner, group, mode):
    _, host = node
    target = host.file(path)
    assert (target.user, target.group, target.mode) == (owner, group, mode)


def test_model_verified_and_selected(node):
    _, host = node
    store = "/data/models/smollm2-135m-instruct"
    assert host.file(f"{store}/current").linked_to == f"{store}/{BUNDLED_MODEL['sha256']}.gguf"
    assert host.file(f"{store}/current").sha256sum == BUNDLED_MODEL["sha256"]


def test_gateway_secrets_are_private(topology):
    host = lab_host(topology["gateways"][0])
    keys = host.file("/etc/nginx/nas-ai/api-keys.map")
    assert (keys.user, keys.mode) == ("root", 0o600)
    for key in secrets.api_keys(None).values():
        assert key not in host.check_output("cat /var/log/nginx/*.log || true")


def _remote_engine(topology) -> str:
    """The address of an engine on a host that is not a gateway."""
    name = [n for n in topology["hosts"] if n not in topology["gateways"]][0]
    return topology["addresses"][name]


def test_engine_port_is_closed_to_hosts_outside_the_gateway_group(topology):
    remote = _remote_engine(topology)
    with pytest.raises(urllib.error.URLError) as refused:  # the controller is no gateway
        urllib.request.urlopen(f"http://{remote}:8080/health", timeout=5)
    assert "refused" in str(refused.value).lower() or "reset" in str(refused.value).lower()
    gateway = lab_host(topology["gateways"][0])
    assert http_from(gateway, f"http://{remote}:8080/health")[0] == 200


def test_engine_refuses_requests_without_the_backend_key(topology):
    gateway = lab_host(topology["gateways"][0])
    url = f"http://{_remote_engine(topology)}:8080/v1/models"
    assert http_from(gateway, url)[0] == 401
    status, body = http_from(gateway, url, {"Authorization": f"Bearer {secrets.backend_key()}"})
    assert status == 200 and json.loads(body)["data"][0]["id"] == "smollm2-135m-instruct"
