"""The lab for the tests: hosts from the pyinfra inventories, deploys run as an operator runs them."""

import time

import pytest

from tasks import secrets
from tests.lab.harness import BACKGROUND_VM, deployed, inventory_hosts, lab


def pytest_sessionfinish(session):
    BACKGROUND_VM.stop()  # its processes would otherwise outlive pytest and race `lab down`


@pytest.fixture(scope="session")
def container_lab():
    result = lab("up", "--nodes", "2")
    assert result.returncode == 0, result.stderr
    return inventory_hosts("inventory/lab.py")


@pytest.fixture(scope="session")
def api_key() -> str:
    return next(iter(secrets.api_keys(None).values()))


@pytest.fixture(scope="session")
def deployment(container_lab, request):
    """The first deploy onto the container lab, then a second one with nothing changed."""
    started = time.monotonic()
    first = deployed("inventory/lab.py", who="fixture deployment: first deploy")
    # The engine the VM installs is on the controller now: the VM boots and deploys beside the
    # container tests instead of after them.
    if any(item.get_closest_marker("vm") for item in request.session.items):
        BACKGROUND_VM.start()
    between = time.monotonic()
    second = deployed("inventory/lab.py", who="fixture deployment: second, nothing changed")
    seconds = (between - started, time.monotonic() - between)
    return {"first": first, "second": second, "groups": container_lab, "seconds": seconds}


@pytest.fixture(scope="session")
def gateway_url(deployment) -> str:
    name, data = deployment["groups"]["gateway"][0]
    return f"http://{data['ssh_hostname']}"
