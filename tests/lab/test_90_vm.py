"""The VM backend: its own kernel, so the slice's limits are enforced and reboots are real.
Its emulated CPU is slow: requests ask for a token or two and waits are long. The VM boots and
deploys in the background while the container tests run (tests/lab/harness.py, BackgroundVm);
these tests come last and take it from there."""

import os

import httpx
import pytest

from lab.waiting import wait_until
from tests.lab.harness import BACKGROUND_VM, deploy_failure, inventory_hosts, lab_host

pytestmark = [pytest.mark.lab, pytest.mark.vm]
SLOW_S = 1800  # TCG: a model load and warm-up take minutes


def _wait(condition, timeout: float, what: str):
    # SSH drops while a host reboots: whatever a probe raises then means "not yet".
    return wait_until(condition, timeout, what, interval=2.0, retry_on=(Exception,))


@pytest.fixture(scope="module")
def vm_background(deployment):  # the container deploy leaves the engine the VM installs
    outcome = BACKGROUND_VM.wait()
    print(f"VM up in {outcome['up_seconds']:.0f} s, up and deployed in {outcome['seconds']:.0f} s "
          "(in the background)")
    return outcome


@pytest.fixture(scope="module")
def vm_lab(vm_background):
    result = vm_background["up"]
    assert result.returncode == 0, result.stderr
    groups = inventory_hosts("inventory/lab_vm.py")
    name, data = groups["inference"][0]
    return {"name": name, "address": data["ssh_hostname"], "host": lab_host(name)}


def test_vm_boots_its_own_kernel_with_cgroup2_and_no_failed_unit(vm_lab):
    host = vm_lab["host"]
    assert host.check_output("systemctl is-system-running") == "running"
    assert host.check_output("uname -r") != os.uname().release
    assert host.check_output("stat -fc %T /sys/fs/cgroup") == "cgroup2fs"


def test_vm_enforces_a_units_memory_max(vm_lab):
    host = vm_lab["host"]
    host.run("systemctl stop lab-memory-test 2>/dev/null")
    host.check_output("systemd-run --unit lab-memory-test -p MemoryMax=64M sleep 600")
    try:
        memory_max = host.check_output("cat /sys/fs/cgroup/system.slice/lab-memory-test.service/memory.max")
        assert memory_max == str(64 << 20)
    finally:
        host.run("systemctl stop lab-memory-test")


@pytest.fixture(scope="module")
def vm_stack(vm_lab, vm_background, api_key):
    result = vm_background["deploy"]
    assert result.returncode == 0, deploy_failure(result)
    return vm_lab


def _complete(address: str, api_key: str) -> httpx.Response:
    return httpx.post(f"http://{address}/v1/completions", timeout=SLOW_S,
                      headers={"Authorization": f"Bearer {api_key}"},
                      json={"prompt": "Hi", "max_tokens": 1})


def test_vm_stack_answers(vm_stack, api_key):
    response = _complete(vm_stack["address"], api_key)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 1


def test_exceeding_memory_max_kills_the_engine_alone_and_it_restarts(vm_stack, api_key):
    host = vm_stack["host"]
    show = "systemctl show -p {} --value {}".format
    restarts = int(host.check_output(show("NRestarts", "nas-ai-engine")))
    others = {unit: host.check_output(show("MainPID", unit)) for unit in ("nginx", "ssh")}
    cgroup = "/sys/fs/cgroup/nasai.slice/nas-ai-engine.service/cgroup.procs"
    # A process inside the engine's unit that wants 2 GiB against the slice's 1 GiB MemoryMax.
    hog = host.run(f"sh -c 'echo $$ > {cgroup} && exec python3 -c \"b = bytearray(2 << 30)\"'")
    assert hog.rc != 0  # killed
    assert "OOM killer" in host.check_output("journalctl -u nas-ai-engine --no-pager -n 200")
    _wait(lambda: int(host.check_output(show("NRestarts", "nas-ai-engine"))) > restarts, 120, "a restart")
    _wait(lambda: host.run("systemctl is-active nas-ai-engine").stdout.strip() == "active", SLOW_S,
          "the engine active again")
    assert {unit: host.check_output(show("MainPID", unit)) for unit in others} == others
    assert _complete(vm_stack["address"], api_key).status_code == 200


def test_the_stack_is_back_after_a_reboot(vm_stack, api_key):
    host = vm_stack["host"]
    boot_id = host.check_output("cat /proc/sys/kernel/random/boot_id")
    host.run("systemctl reboot")
    _wait(lambda: host.check_output("cat /proc/sys/kernel/random/boot_id") not in ("", boot_id), 900,
          "the VM to boot again")
    units = "nas-ai-engine nginx nas-ai-firewall"
    _wait(lambda: set(host.run(f"systemctl is-active {units}").stdout.split()) == {"active"}, SLOW_S,
          "the stack to start after the reboot")
    assert host.sysctl("vm.swappiness") == 10
    response = _complete(vm_stack["address"], api_key)
    assert response.status_code == 200, response.text
