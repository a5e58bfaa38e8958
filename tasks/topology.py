"""Who does what, read from the inventory alone: the `inference` group serves (every host when the
group is absent), the `gateway` group fronts them (default: the first inference host)."""

from pyinfra import host, inventory
from pyinfra.api.exceptions import NoGroupError

from tasks.settings import DeployError


def _group(name: str) -> list | None:
    try:
        return list(inventory.get_group(name))
    except NoGroupError:
        return None


def inference_hosts() -> list:
    return _group("inference") or list(inventory)


def gateway_hosts() -> list:
    gateways = _group("gateway")
    if gateways is None:
        inference = inference_hosts()
        if not inference:
            raise DeployError("the inventory has no hosts: list your NAS under `inference`")
        return inference[:1]
    return gateways


def lan_address(target) -> str:
    return target.data.get("engine_lan_address") or target.data.get("ssh_hostname") or target.name


def is_inference(target=None) -> bool:
    return (target or host).name in {h.name for h in inference_hosts()}


def is_gateway(target=None) -> bool:
    return (target or host).name in {h.name for h in gateway_hosts()}


def engine_bind_address(target=None) -> str:
    """Loopback when this host's own gateway is the only one, else the LAN address."""
    target = target or host
    if [g.name for g in gateway_hosts()] == [target.name]:
        return "127.0.0.1"
    return lan_address(target)


def upstream_address(engine_host, gateway_host) -> str:
    """How `gateway_host` reaches the engine of `engine_host`."""
    bind = engine_bind_address(engine_host)
    if bind == "127.0.0.1" and engine_host.name != gateway_host.name:
        raise DeployError(f"{engine_host.name} binds to loopback but {gateway_host.name} is a gateway")
    return bind
