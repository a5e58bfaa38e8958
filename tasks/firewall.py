"""Host firewall (nftables): the engine's port accepts its callers (gateways, Prometheus), the
exporters' ports accept Prometheus, each also loopback; nothing else reaches them."""

import ipaddress
import socket

from pyinfra.operations import apt

from tasks import topology
from tasks.plan import Plan
from tasks.rendering import SYSTEMD_DIR, install_checked, put_unit_file, render, running

UNIT_NAME = "nas-ai-firewall.service"
NODE_EXPORTER_PORT = 9100
NGINX_EXPORTER_PORT = 9113
GATEWAY_LOG_EXPORTER_PORT = 3903  # mtail, reading the gateway's access log


def _ipv4(address: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        return socket.gethostbyname(address)  # a host named by DNS: nftables wants addresses


def rules(ports: list[dict]) -> str:
    """ports: [{"number", "sources" (addresses), "why"}]"""
    return render("firewall/nas-ai.nft.j2", ports=[
        dict(port, sources=sorted({_ipv4(a) for a in port["sources"]})) for port in ports])


def _addresses(hosts) -> list[str]:
    return [topology.lan_address(h) for h in hosts]


def ports(plan: Plan) -> list[dict]:
    settings = plan.settings
    monitoring = _addresses(topology.monitoring_hosts())
    opened = [{"number": NODE_EXPORTER_PORT, "sources": monitoring,
               "why": "node_exporter answers Prometheus alone"}]
    if plan.gateway:
        opened.append({"number": NGINX_EXPORTER_PORT, "sources": monitoring,
                       "why": "the nginx exporter answers Prometheus alone"})
        opened.append({"number": GATEWAY_LOG_EXPORTER_PORT, "sources": monitoring,
                       "why": "mtail (the gateway's answers by status) answers Prometheus alone"})
    if plan.inference:
        bound_to_loopback = plan.bind_address == "127.0.0.1"
        callers = topology.gateway_hosts() + topology.monitoring_hosts()
        opened.append({"number": settings.engine_port,
                       "sources": [] if bound_to_loopback else _addresses(callers),
                       "why": "the engine answers the gateways and Prometheus alone"})
    return opened


def configure(plan: Plan) -> None:
    settings = plan.settings
    rules_path = f"{settings.system_config_dir}/firewall.nft"
    apt.packages(name="Install nftables", packages=["nftables"], no_recommends=True,
                 cache_time=24 * 3600)
    rules_op = install_checked("Firewall rules", rules(ports(plan)), rules_path, "nft --check -f {path}",
                               mode="0640")
    unit = put_unit_file(f"Unit {UNIT_NAME}", render("firewall/nas-ai-firewall.service.j2", rules=rules_path),
                         f"{SYSTEMD_DIR}/{UNIT_NAME}")
    running("Firewall active and enabled", UNIT_NAME, unit_files=[unit], reloaded=rules_op.will_change)
