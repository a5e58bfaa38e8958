"""Every constant of the lab in one place: network, names, paths, host sizes."""

import ipaddress
import os
from pathlib import Path

# The whole lab range gets an `unreachable` route on the machine and in every guest, so a packet
# to a lab address that is not up fails locally instead of leaving through the default route.
LAB_RANGE = ipaddress.ip_network("10.213.0.0/16")
# The network all lab hosts share: a bridge on the machine, NAT to the package registries.
LAB_NETWORK = ipaddress.ip_network("10.213.0.0/24")
LAB_GATEWAY = ipaddress.ip_address("10.213.0.1")
BRIDGE = "nasailab0"
# Fixed, locally administered: a bridge whose address is not set takes its ports' lowest, which
# changes when that host's port goes (a host unplugged), and every other host's ARP entry for
# this machine goes stale with it.
BRIDGE_MAC = "02:6e:61:73:61:69"
# Marks every iptables rule the lab adds, so `down` removes exactly those.
RULE_COMMENT = "nas-ai-lab"

# Host addresses: containers nas1.. at .11.., VMs vm1.. at .101..
BACKENDS = {
    "container": {"prefix": "nas", "first_octet": 10},
    "vm": {"prefix": "vm", "first_octet": 100},
}
# Other sets of hosts beside the default ones: the alternative scenario's containers
# (inventory/lab_alternative.py) alt1.. at .31..
SCENARIOS = {
    "default": BACKENDS,
    "alternative": {"container": {"prefix": "alt", "first_octet": 30}},
}
MAX_NODES = 9

DEPLOY_USER = "deploy"

# The VM's NAS profile under qemu: small enough for two on a 2-core, 24 GB machine.
VM_MEMORY_MB = 4096
VM_CPUS = 2
VM_DISK_SIZE = "12G"

BOOT_TIMEOUT_S = {"container": 120, "vm": 600}

HOME = Path(os.environ.get("NAS_AI_LAB_HOME", Path.home() / ".cache" / "nas-ai-lab"))
IMAGES_DIR = HOME / "images"
HOSTS_DIR = HOME / "hosts"
SSH_DIR = HOME / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
SSH_CONFIG = SSH_DIR / "config"  # `ssh -F` it to reach lab hosts by name
STATE_FILE = HOME / "lab.json"


def host_name(backend: str, index: int, scenario: str = "default") -> str:
    return f"{SCENARIOS[scenario][backend]['prefix']}{index}"


def host_address(backend: str, index: int, scenario: str = "default") -> ipaddress.IPv4Address:
    return LAB_NETWORK.network_address + SCENARIOS[scenario][backend]["first_octet"] + index
