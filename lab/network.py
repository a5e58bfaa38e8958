"""The lab network on the machine: one bridge, NAT to the package registries, and an
`unreachable` route for the whole lab range. Everything added here is removed by `teardown`."""

import subprocess
from pathlib import Path

from lab import config

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def _iptables_rules() -> list[tuple[str, list[str]]]:
    tag = ["-m", "comment", "--comment", config.RULE_COMMENT]
    subnet = str(config.LAB_NETWORK)
    return [
        ("nat", ["POSTROUTING", "-s", subnet, "!", "-o", config.BRIDGE, *tag, "-j", "MASQUERADE"]),
        ("filter", ["FORWARD", "-i", config.BRIDGE, "!", "-o", config.BRIDGE, *tag, "-j", "ACCEPT"]),
        ("filter", ["FORWARD", "-o", config.BRIDGE, "-m", "conntrack",
                    "--ctstate", "RELATED,ESTABLISHED", *tag, "-j", "ACCEPT"]),
    ]


def bridge_exists() -> bool:
    return _run("ip", "link", "show", config.BRIDGE, check=False).returncode == 0


def setup(state: dict) -> None:
    """Idempotent: a second call finds everything in place and adds nothing."""
    if not bridge_exists():
        _run("ip", "link", "add", config.BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{config.LAB_GATEWAY}/{config.LAB_NETWORK.prefixlen}",
             "dev", config.BRIDGE)
    _run("ip", "link", "set", config.BRIDGE, "address", config.BRIDGE_MAC)
    _run("ip", "link", "set", config.BRIDGE, "up")
    _run("ip", "route", "replace", "unreachable", str(config.LAB_RANGE))
    for table, rule in _iptables_rules():
        if _run("iptables", "-t", table, "-C", *rule, check=False).returncode != 0:
            _run("iptables", "-t", table, "-A", *rule)
    state.setdefault("ip_forward_before", IP_FORWARD.read_text().strip())
    IP_FORWARD.write_text("1\n")


def add_tap(name: str) -> None:
    if _run("ip", "link", "show", name, check=False).returncode != 0:
        _run("ip", "tuntap", "add", "dev", name, "mode", "tap")
    _run("ip", "link", "set", name, "master", config.BRIDGE, "up")


def remove_link(name: str) -> None:
    _run("ip", "link", "del", name, check=False)


def teardown(state: dict) -> None:
    for table, rule in _iptables_rules():
        while _run("iptables", "-t", table, "-C", *rule, check=False).returncode == 0:
            # check=False: a concurrent `down` may have removed it between -C and -D
            _run("iptables", "-t", table, "-D", *rule, check=False)
    _run("ip", "route", "del", "unreachable", str(config.LAB_RANGE), check=False)
    if bridge_exists():
        _run("ip", "link", "del", config.BRIDGE)
    if "ip_forward_before" in state:
        IP_FORWARD.write_text(state.pop("ip_forward_before") + "\n")


def leftovers() -> list[str]:
    """What of the lab network is still on the machine (empty after a clean `down`)."""
    found = []
    if bridge_exists():
        found.append(f"bridge {config.BRIDGE}")
    links = _run("ip", "-o", "link", "show").stdout
    found += [f"link {line.split(': ')[1].split('@')[0]}" for line in links.splitlines()
              if ": vb-lab-" in line or ": labtap-" in line]
    if str(config.LAB_RANGE) in _run("ip", "route", "show", "table", "main").stdout:
        found.append(f"route {config.LAB_RANGE}")
    for table in ("nat", "filter"):
        rules = _run("iptables", "-t", table, "-S").stdout
        found += [f"iptables {table}: {r}" for r in rules.splitlines() if config.RULE_COMMENT in r]
    return found
