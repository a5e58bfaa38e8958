"""The lab for the tests: hosts from the pyinfra inventories, deploys run as an operator runs them."""

import time
from dataclasses import dataclass

import pytest

from tasks import secrets
from tasks.settings import Settings, resolve
from tests.lab.harness import ALTERNATIVE_INVENTORY, BACKGROUND_VM, deployed, inventory_hosts, lab


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
    _name, data = deployment["groups"]["gateway"][0]
    return f"http://{data['ssh_hostname']}"


@pytest.fixture(scope="session")
def alternative(deployment):
    """The alternative scenario on two fresh hosts, deployed from scratch, then again with
    nothing changed. After the default deploy, so the installed engine is on the controller."""
    result = lab("up", "--scenario", "alternative", "--nodes", "2")
    assert result.returncode == 0, result.stderr
    groups = inventory_hosts(ALTERNATIVE_INVENTORY)
    started = time.monotonic()
    first = deployed(ALTERNATIVE_INVENTORY, who="fixture alternative: first deploy, fresh hosts")
    between = time.monotonic()
    second = deployed(ALTERNATIVE_INVENTORY, who="fixture alternative: second, nothing changed")
    return {"first": first, "second": second, "groups": groups,
            "seconds": (between - started, time.monotonic() - between)}


@dataclass(frozen=True)
class Scenario:
    """A deployed inventory as the checks read it: its hosts by role and each host's settings."""
    name: str
    hosts: list[str]
    gateways: list[str]
    monitoring: list[str]
    addresses: dict[str, str]
    settings: dict[str, Settings]


def _scenario(name: str, groups: dict) -> Scenario:
    inference = groups["inference"]
    # Gateway and monitoring default to the first inference host, as tasks/topology.py has it.
    return Scenario(name=name, hosts=[h for h, _ in inference],
                    gateways=[h for h, _ in groups.get("gateway", inference[:1])],
                    monitoring=[h for h, _ in groups.get("monitoring", inference[:1])],
                    addresses={h: data["ssh_hostname"] for h, data in inference},
                    settings={h: resolve(h, data) for h, data in inference})


@pytest.fixture(scope="module", params=["default", "alternative"])
def scenario(request) -> Scenario:
    """Each scenario in turn, for the checks that hold for any inventory."""
    deployed_scenario = request.getfixturevalue("deployment" if request.param == "default" else "alternative")
    return _scenario(request.param, deployed_scenario["groups"])
