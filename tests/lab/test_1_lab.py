"""The lab itself: container hosts boot with systemd, SSH and their own addresses on a network
that cannot leak to the machine's real one."""

import socket
import subprocess

import pytest

from lab import config as lab_config
from lab.waiting import wait_until
from tests.lab.harness import http_from, lab_host

pytestmark = pytest.mark.lab


def test_container_hosts_boot_with_systemd_and_no_failed_unit(container_lab):
    for name, data in container_lab["inference"]:
        host = lab_host(name)
        state = host.run("systemctl is-system-running").stdout.strip()
        failed = host.run("systemctl --failed --no-legend --plain").stdout.strip()
        journal = host.run("journalctl -b -p warning --no-pager -n 30").stdout if failed else ""
        assert (state, failed) == ("running", ""), f"{name}: {state}; failed: {failed}\n{journal}"
        assert host.check_output("hostname") == name
        assert data["ssh_hostname"] in host.check_output("ip -4 -o addr show host0")


def test_host_a_reaches_a_port_on_host_b_over_the_lab_network(container_lab):
    (name_a, _), (name_b, data_b) = container_lab["inference"][:2]
    b = lab_host(name_b)
    b.run("systemctl stop lab-port-test 2>/dev/null")
    b.check_output(f"systemd-run --unit lab-port-test python3 -m http.server 18080 --bind {data_b['ssh_hostname']}")
    try:
        a = lab_host(name_a)
        url = f"http://{data_b['ssh_hostname']}:18080/"
        # The server may still be binding: until then the request fails on a and http_from asserts.
        status, _ = wait_until(lambda: http_from(a, url), 15, f"{url} to answer on {name_a}", interval=0.5,
                               retry_on=(AssertionError,))
        assert status == 200
    finally:
        b.run("systemctl stop lab-port-test")


def test_a_lab_address_that_is_not_up_fails_locally(container_lab):
    outside_the_network = str(lab_config.LAB_RANGE.network_address + 5 * 256 + 5)
    route = subprocess.run(["ip", "route", "get", outside_the_network], capture_output=True, text=True, check=False)
    assert route.returncode != 0 and "No route to host" in route.stderr  # the unreachable route
    with pytest.raises(OSError) as refused:
        socket.create_connection((outside_the_network, 80), timeout=5)
    assert "unreachable" in str(refused.value).lower() or "no route" in str(refused.value).lower()
    # An unused address of the lab network stays on the bridge: never the default route.
    unused = str(lab_config.LAB_NETWORK.network_address + 250)
    route = subprocess.run(["ip", "route", "get", unused], capture_output=True, text=True, check=True)
    assert f"dev {lab_config.BRIDGE}" in route.stdout
    for name, _ in container_lab["inference"]:
        inside = lab_host(name).run(f"ip route get {outside_the_network}")
        assert inside.rc != 0 and "No route to host" in inside.stderr, name
