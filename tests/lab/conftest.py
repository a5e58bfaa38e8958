"""The lab for the tests: hosts from the pyinfra inventories, deploys run as an operator runs them."""

import re
import shlex
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import config as lab_config
from tasks import secrets

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).parent / "pyinfra"


def lab(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def deploy(inventory: str, *args: str, timeout: int = 2400) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYINFRA), "-y", inventory, "deploy.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def http_from(host, url: str, headers: dict | None = None) -> tuple[int, str]:
    """(status, body) of a GET sent from a lab host, with the host's own python3."""
    script = ("import sys, urllib.request, urllib.error\n"
              f"request = urllib.request.Request({url!r}, headers={headers or {}!r})\n"
              "try:\n    response = urllib.request.urlopen(request, timeout=30)\n"
              "except urllib.error.HTTPError as error:\n    response = error\n"
              "print(response.status)\nprint(response.read().decode())\n")
    result = host.run(f"python3 -c {shlex.quote(script)}")
    assert result.rc == 0, result.stderr
    status, _, body = result.stdout.partition("\n")
    return int(status), body


def changed_operations(output: str) -> int:
    """The `Success` column of pyinfra's Grand total row: operations that changed something."""
    match = re.search(r"Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    assert match, output[-3000:]
    return 0 if match.group(2) == "-" else int(match.group(2))


def inventory_hosts(inventory: str) -> dict[str, list[tuple[str, dict]]]:
    """The groups of a pyinfra inventory file, as pyinfra reads them."""
    groups = runpy.run_path(str(ROOT / inventory))
    return {name: value for name, value in groups.items()
            if isinstance(value, list) and value and isinstance(value[0], tuple)}


def lab_host(name: str):
    import testinfra
    return testinfra.get_host(f"ssh://{name}", ssh_config=str(lab_config.SSH_CONFIG), sudo=True)


@pytest.fixture(scope="session")
def container_lab():
    result = lab("up", "--nodes", "2")
    assert result.returncode == 0, result.stderr
    return inventory_hosts("inventory/lab.py")


@pytest.fixture(scope="session")
def api_key() -> str:
    return next(iter(secrets.api_keys(None).values()))


@pytest.fixture(scope="session")
def deployment(container_lab):
    """The first deploy onto the container lab, then a second one with nothing changed."""
    started = time.monotonic()
    first = deploy("inventory/lab.py")
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
    between = time.monotonic()
    second = deploy("inventory/lab.py")
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-3000:]
    seconds = (between - started, time.monotonic() - between)
    return {"first": first, "second": second, "groups": container_lab, "seconds": seconds}


@pytest.fixture(scope="session")
def gateway_url(deployment) -> str:
    name, data = deployment["groups"]["gateway"][0]
    return f"http://{data['ssh_hostname']}"
