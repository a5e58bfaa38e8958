"""Host firewall (nftables), IPv4 and IPv6: every port the stack opens is in the table. The
engine's port accepts its callers (gateways, Prometheus), the exporters' ports accept Prometheus,
each also loopback; the gateway's ports are open; the ports of services bound to loopback
(Prometheus, Alertmanager, Grafana, nginx's status) accept loopback alone, so a listener moved to
the LAN by mistake is still closed."""

import ipaddress
import socket

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import apt, server

from tasks import gateway, topology
from tasks.plan import Plan
from tasks.rendering import SYSTEMD_DIR, install_checked, put_unit_file, render, running
from tasks.settings import DeployError

UNIT_NAME = "nas-ai-firewall.service"
NODE_EXPORTER_PORT = 9100
NGINX_EXPORTER_PORT = 9113
GATEWAY_LOG_EXPORTER_PORT = 3903  # mtail, reading the gateway's access log
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
EVERYONE = None  # the sources of a port open to the LAN
LOAD_TRIES = 5


def addresses_of(name: str) -> list[str]:
    """The IPv4 and IPv6 addresses of an address or a host name (nftables wants addresses)."""
    try:
        return [str(ipaddress.ip_address(name))]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise DeployError(f"host `{name}` does not resolve to an address ({error.strerror}): set its "
                          "engine_lan_address or ssh_hostname to an IP address") from None
    return sorted({str(ipaddress.ip_address(info[4][0].split("%")[0])) for info in found})


def bind_ip(address: str) -> str:
    """The address the engine binds, as an IP (IPv4 first): resolved at deploy time, because the
    engine's unit allows no DNS query (IPAddressDeny=any)."""
    found = addresses_of(address)
    return next((a for a in found if ipaddress.ip_address(a).version == 4), found[0])


def rules(ports: list[dict]) -> str:
    """ports: [{"number", "sources" (addresses or names; EVERYONE: open), "why"}]"""
    rendered = []
    for port in ports:
        if port["sources"] is EVERYONE:
            rendered.append(dict(port, open=True, ipv4=[], ipv6=[]))
            continue
        found = {ipaddress.ip_address(a) for source in port["sources"] for a in addresses_of(source)}
        rendered.append(dict(port, open=False, ipv4=sorted(str(a) for a in found if a.version == 4),
                             ipv6=sorted(str(a) for a in found if a.version == 6)))
    return render("firewall/nas-ai.nft.j2", ports=rendered)


def load_command(rules_path: str, tries: int = LOAD_TRIES) -> str:
    """A shell command that loads the table, tried again 2 s after a failure. Two CI runs saw the
    unit's first start on a fresh lab container fail; the likely cause is the lab's, not nft's: its
    containers share one systemd cgroup tree, so a unit's start in one can race the same unit's
    exit in another (219/CGROUP, before the shell runs, which no retry here helps). A failure of
    nft itself shows its own message in the deploy's output."""
    return " || ".join([f"nft -f {rules_path}"] + [f"{{ sleep 2; nft -f {rules_path}; }}"] * (tries - 1))


def _addresses(hosts) -> list[str]:
    return [topology.lan_address(h) for h in hosts]


def engine_callers(plan: Plan) -> list[str]:
    """Who may reach the engine's port besides loopback: the gateways and Prometheus, and the host
    itself on its LAN address (the unit's readiness probe calls the address it binds)."""
    if plan.bind_address == "127.0.0.1":
        return []
    callers = topology.gateway_hosts() + topology.monitoring_hosts()
    return sorted(set(_addresses(callers)) | {plan.bind_address})


def ports(plan: Plan) -> list[dict]:
    settings = plan.settings
    monitoring = _addresses(topology.monitoring_hosts())
    opened = [{"number": NODE_EXPORTER_PORT, "sources": monitoring,
               "why": "node_exporter answers Prometheus alone"}]
    if plan.gateway:
        opened.append({"number": settings.gateway_port, "sources": EVERYONE,
                       "why": "the gateway: every client, each with its API key"})
        if settings.gateway_tls:
            opened.append({"number": settings.gateway_tls_port, "sources": EVERYONE,
                           "why": "the gateway over TLS: every client, each with its API key"})
        opened.append({"number": int(gateway.STUB_STATUS_ADDRESS.rsplit(":", 1)[1]), "sources": [],
                       "why": "nginx's status page, read by the exporter on this host"})
        opened.append({"number": NGINX_EXPORTER_PORT, "sources": monitoring,
                       "why": "the nginx exporter answers Prometheus alone"})
        opened.append({"number": GATEWAY_LOG_EXPORTER_PORT, "sources": monitoring,
                       "why": "mtail (the gateway's answers by status) answers Prometheus alone"})
    if plan.monitoring:
        opened.append({"number": PROMETHEUS_PORT, "sources": [], "why": "Prometheus: loopback, over SSH"})
        opened.append({"number": ALERTMANAGER_PORT, "sources": [], "why": "Alertmanager: loopback, over SSH"})
        if settings.monitoring_grafana:
            opened.append({"number": settings.monitoring_grafana_port, "sources": [],
                           "why": "Grafana: loopback, over SSH"})
    if plan.inference:
        opened.append({"number": settings.engine_port, "sources": engine_callers(plan),
                       "why": "the engine answers the gateways and Prometheus alone"})
    return opened


def configure(plan: Plan) -> bool:
    """The table and its unit; whether the unit restarts (which stops the engine bound to it)."""
    settings = plan.settings
    rules_path = f"{settings.system_config_dir}/firewall.nft"
    apt.packages(name="Install nftables", packages=["nftables"], no_recommends=True,
                 cache_time=24 * 3600)
    rules_op = install_checked("Firewall rules", rules(ports(plan)), rules_path, "nft --check -f {path}",
                               mode="0640")
    unit = put_unit_file(f"Unit {UNIT_NAME}", render("firewall/nas-ai-firewall.service.j2", load=load_command(rules_path),
                                                     rules=rules_path), f"{SYSTEMD_DIR}/{UNIT_NAME}")
    # A table flushed by hand (`nft flush ruleset`, a restart of nftables.service) comes back.
    table_gone = host.get_fact(Command, "nft list table inet nas_ai >/dev/null 2>&1 || echo gone") == "gone"
    if rules_op.will_change or table_gone:
        # Loaded by nft itself before the unit starts or goes on, first deploy included: a failure
        # shows nft's own message in the deploy's output, where a failed start job says nothing.
        server.shell(name="Firewall rules loaded", commands=[load_command(rules_path)])
    running("Firewall active and enabled", UNIT_NAME, unit_files=[unit])
    return unit.will_change
