"""The VM backend: its own kernel, so the slice's limits are enforced and reboots are real.
Its emulated CPU is slow: requests ask for a token or two and waits are long. The VM boots and
deploys in the background while the container tests run (tests/lab/harness.py, BackgroundVm);
these tests come last and take it from there."""

import os
import re
import shlex
import statistics
import threading
import time

import httpx
import pytest

from lab.waiting import wait_until
from tasks.settings import resolve
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
    return {"name": name, "data": data, "address": data["ssh_hostname"], "host": lab_host(name)}


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


def _complete(address: str, api_key: str, timeout: float = SLOW_S) -> httpx.Response:
    return httpx.post(f"http://{address}/v1/completions", timeout=timeout,
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


RATE_SPACING_S = 6.5  # the VM's gateway keeps the article's 10 requests a minute per key
CPU_HOG = "yes >/dev/null & yes >/dev/null & wait"  # both vCPUs busy, as a NAS's indexer or scrub


def _short_questions(address: str, api_key: str, count: int = 4) -> list[float]:
    seconds = []
    for _ in range(count):
        started = time.monotonic()
        response = httpx.post(f"http://{address}/v1/chat/completions", timeout=300,
                              headers={"Authorization": f"Bearer {api_key}"},
                              json={"model": "any", "max_tokens": 4,
                                    "messages": [{"role": "user", "content": "Name one colour."}]})
        assert response.status_code == 200, response.text
        seconds.append(time.monotonic() - started)
        time.sleep(RATE_SPACING_S)
    return seconds


def test_a_busy_nas_keeps_short_questions_within_twice_their_time(vm_stack, api_key):
    """Both vCPUs taken by a process of the NAS's own services (system.slice): the engine's slice
    weight (service_cpu_weight) keeps a short question within 2x of its time on an idle VM. The
    same with systemd's default weight (100, as system.slice) is measured beside it."""
    host, address = vm_stack["host"], vm_stack["address"]
    weight = host.check_output("systemctl show -p CPUWeight --value nasai.slice")
    assert weight == str(resolve(vm_stack["name"], vm_stack["data"]).service_cpu_weight)
    runtime_weight = "/run/systemd/system.control/nasai.slice.d/50-CPUWeight.conf"
    _short_questions(address, api_key, 1)  # warm
    calm = _short_questions(address, api_key)
    host.run("systemctl stop lab-cpu-hog 2>/dev/null; systemctl reset-failed lab-cpu-hog 2>/dev/null")
    host.check_output(f"systemd-run --unit lab-cpu-hog --slice system.slice -p RuntimeMaxSec=600 "
                      f"sh -c {shlex.quote(CPU_HOG)}")
    try:
        busy = _short_questions(address, api_key)
        host.check_output("systemctl set-property --runtime nasai.slice CPUWeight=100")
        try:
            equal = _short_questions(address, api_key)
        finally:
            host.check_output(f"systemctl set-property --runtime nasai.slice CPUWeight={weight} && "
                              f"rm -f {runtime_weight} && systemctl daemon-reload")
    finally:
        host.run("systemctl stop lab-cpu-hog")
    median = statistics.median
    print(f"short questions (4 tokens) on the VM's 2 vCPUs, median of {len(calm)}: idle {median(calm):.2f} s; "
          f"both vCPUs busy in system.slice: {median(busy):.2f} s with CPUWeight={weight} "
          f"({median(busy) / median(calm):.1f}x), {median(equal):.2f} s with the default 100 "
          f"({median(equal) / median(calm):.1f}x)")
    assert host.check_output("systemctl show -p CPUWeight --value nasai.slice") == weight
    assert host.check_output("cat /sys/fs/cgroup/nasai.slice/cpu.weight") == weight  # the kernel's, not the unit's
    assert median(busy) <= 2 * median(calm)
    assert median(busy) < median(equal)  # the weight is what holds it


# Grows by 64 MiB a second, each page written (zeroed pages would cost the kernel nothing),
# until the kernel kills it: what a runaway NAS service (an indexer, a backup) does.
MEMORY_HOG = ("import time\nheld = []\nwhile True:\n    held.append(b'x' * (64 << 20))\n"
              "    print(len(held) * 64, flush=True)\n    time.sleep(1)\n")


def test_memory_pressure_from_outside_the_slice_leaves_the_engine_serving(vm_stack, api_key):
    """A process of the NAS's own services (system.slice, no limit) takes more memory than the VM
    has. The kernel's OOM killer ends whoever it picks; the engine's slice keeps its limits, and the
    engine serves afterwards (started again if it was the one killed)."""
    host = vm_stack["host"]
    show = "systemctl show -p {} --value {}".format
    restarts = int(host.check_output(show("NRestarts", "nas-ai-engine")))
    limits = host.check_output("systemctl show -p MemoryHigh -p MemoryMax nasai.slice")
    total_mib = int(host.check_output("awk '/MemTotal/ {print $2}' /proc/meminfo")) >> 10
    host.run("systemctl stop lab-memory-hog 2>/dev/null; systemctl reset-failed lab-memory-hog 2>/dev/null")
    host.check_output(f"systemd-run --unit lab-memory-hog --slice system.slice python3 -c {shlex.quote(MEMORY_HOG)}")
    started = time.monotonic()
    _wait(lambda: host.run("systemctl is-active lab-memory-hog").stdout.strip() != "active", 600,
          "the memory hog to be killed")
    killed_s = time.monotonic() - started
    journal = host.check_output(f"journalctl -k --no-pager --since '-{int(killed_s) + 60}s'")
    victims = sorted(set(re.findall(r"Killed process \d+ \(([^)]+)\)", journal)))
    held_mib = host.check_output("journalctl -u lab-memory-hog --no-pager -o cat | grep -E '^[0-9]+$' | tail -1")
    _wait(lambda: host.run("systemctl is-active nas-ai-engine").stdout.strip() == "active", SLOW_S,
          "the engine active after the memory pressure")
    response = _complete(vm_stack["address"], api_key)
    after = int(host.check_output(show("NRestarts", "nas-ai-engine")))
    print(f"memory hog in system.slice on a {total_mib} MiB VM: killed after {killed_s:.0f} s holding "
          f"{held_mib} MiB; the kernel killed {', '.join(victims) or 'nothing it logged'}; engine restarts "
          f"{after - restarts}; it answered afterwards ({response.status_code})")
    assert response.status_code == 200, response.text
    assert host.check_output("systemctl show -p MemoryHigh -p MemoryMax nasai.slice") == limits
    assert int(held_mib) * 2 > total_mib  # the pressure was real: the hog held over half the VM
    assert victims, journal[-2000:]


def test_the_stack_is_back_after_a_reboot_in_the_middle_of_a_load(vm_stack, api_key):
    """A one-token question every 6.5 s (the gateway's rate) while the VM reboots: those sent while it is down
    fail, the stack starts by itself, and the questions succeed again without a person."""
    host = vm_stack["host"]
    boot_id = host.check_output("cat /proc/sys/kernel/random/boot_id")
    asked: list[tuple[float, float, int | str]] = []
    stop = threading.Event()

    def ask():
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status = _complete(vm_stack["address"], api_key, timeout=120).status_code
            except httpx.HTTPError as error:
                status = type(error).__name__
            asked.append((sent, time.monotonic(), status))
            stop.wait(RATE_SPACING_S)

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    _wait(lambda: any(status == 200 for _, _, status in asked), 300, "a first answer before the reboot")
    rebooted = time.monotonic()
    host.run("systemctl reboot")
    _wait(lambda: host.check_output("cat /proc/sys/kernel/random/boot_id") not in ("", boot_id), 900,
          "the VM to boot again")
    booted_s = time.monotonic() - rebooted
    units = "nas-ai-engine nginx nas-ai-firewall"
    _wait(lambda: set(host.run(f"systemctl is-active {units}").stdout.split()) == {"active"}, SLOW_S,
          "the stack to start after the reboot")
    _wait(lambda: any(sent > rebooted and status == 200 for sent, _, status in asked), SLOW_S,
          "a question answered after the reboot")
    stop.set()
    asker.join(timeout=180)
    answered_again = min(ended for sent, ended, status in asked if sent > rebooted and status == 200) - rebooted
    failed = [(sent - rebooted, ended - rebooted, status) for sent, ended, status in asked if status != 200]
    print(f"VM rebooted under a question every {RATE_SPACING_S} s: booted in {booted_s:.0f} s, answered again "
          f"{answered_again:.0f} s after the reboot; questions {len(asked)}, failed {len(failed)} "
          f"({', '.join(f'{s} sent at {t:+.0f} s' for t, _, s in failed[:6])})")
    assert host.sysctl("vm.swappiness") == 10
    assert all(ended > 0 for _, ended, _ in failed), failed  # nothing failed before the reboot
