"""Who does what, read from the inventory alone: the `inference` group serves (every host when the
group is absent), the `gateway` group fronts them and the `monitoring` group watches them (each
defaults to the first inference host)."""

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


def _group_or_first_inference_host(name: str) -> list:
    hosts = _group(name)
    if hosts is None:
        inference = inference_hosts()
        if not inference:
            raise DeployError("the inventory has no hosts: list your NAS under `inference`")
        return inference[:1]
    return hosts


def gateway_hosts() -> list:
    return _group_or_first_inference_host("gateway")


def monitoring_hosts() -> list:
    return _group_or_first_inference_host("monitoring")


def lan_address(target) -> str:
    return target.data.get("engine_lan_address") or target.data.get("ssh_hostname") or target.name


def is_inference(target=None) -> bool:
    return (target or host).name in {h.name for h in inference_hosts()}


def is_gateway(target=None) -> bool:
    return (target or host).name in {h.name for h in gateway_hosts()}


def is_monitoring(target=None) -> bool:
    return (target or host).name in {h.name for h in monitoring_hosts()}


def engine_clients() -> set[str]:
    """The hosts that call the engines: the gateways, and Prometheus for /metrics."""
    return {h.name for h in gateway_hosts()} | {h.name for h in monitoring_hosts()}


def engine_bind_address(target=None) -> str:
    """Loopback when every caller of this engine is on its own host, else the LAN address."""
    target = target or host
    if engine_clients() == {target.name}:
        return "127.0.0.1"
    return lan_address(target)


def address_from(target, client: str) -> str:
    """How the host named `client` reaches a service of `target` that listens where its engine does."""
    bind = engine_bind_address(target)
    if bind == "127.0.0.1" and target.name != client:
        raise DeployError(f"{target.name} binds to loopback but {client} must reach it")
    return bind


def host_port(address: str, port: int) -> str:
    """`address:port`, an IPv6 address in brackets (as nginx, Prometheus and URLs want it)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
