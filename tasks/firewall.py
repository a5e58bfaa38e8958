"""Host firewall (nftables): the engine's port accepts the gateway hosts and loopback, nothing else."""

import ipaddress
import socket

from pyinfra.operations import apt, systemd

from tasks import preflight, topology
from tasks.rendering import install_checked, put_text, render

UNIT_NAME = "nas-ai-firewall.service"


def _ipv4(address: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        return socket.gethostbyname(address)  # a gateway named by DNS: nftables wants addresses


def rules(engine_port: int, gateway_addresses: list[str]) -> str:
    return render("firewall/nas-ai.nft.j2", engine_port=engine_port,
                  gateway_addresses=sorted(set(gateway_addresses)))


def configure() -> None:
    plan = preflight.plan()
    settings = plan.settings
    rules_path = f"{settings.system_config_dir}/firewall.nft"
    gateways = [] if plan.bind_address == "127.0.0.1" else \
        [_ipv4(topology.lan_address(g)) for g in topology.gateway_hosts()]
    apt.packages(name="Install nftables", packages=["nftables"], no_recommends=True,
                 cache_time=24 * 3600)
    rules_changed = install_checked("Firewall rules", rules(settings.engine_port, gateways),
                                    rules_path, f"nft --check -f {rules_path}", mode="0640")
    unit = put_text(f"Unit {UNIT_NAME}", render("firewall/nas-ai-firewall.service.j2", rules=rules_path),
                    f"/etc/systemd/system/{UNIT_NAME}", "0644")
    systemd.service(name="Firewall active and enabled", service=UNIT_NAME, running=True,
                    enabled=True, daemon_reload=unit.will_change,
                    reloaded=rules_changed and not unit.will_change, restarted=unit.will_change)
