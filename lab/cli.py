"""`lab up | down | status | ssh`: real Debian hosts on this machine for tests, demos and benchmarks."""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from lab import backends, config, image, network, ssh, state, waiting


def _require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("lab: must run as root: it creates a bridge, NAT rules, containers and VMs. "
                 "Run it again with sudo.")


# nspawn may still be setting up a container's cgroups when its first units start: they exit with
# 219/CGROUP (seen on remount-fs, masked, then on tmpfiles-setup, about one boot in four). Such a
# unit is started again, once; a unit that failed otherwise stays failed for the tests to see.
RESTART_CGROUP_TRIPPED = """for unit in $(systemctl --failed --plain --no-legend | awk '{print $1}'); do
    if [ "$(systemctl show -p ExecMainStatus --value "$unit")" = 219 ]; then
        echo "lab: $unit failed with 219/CGROUP at boot: started again" >&2
        systemctl reset-failed "$unit"; systemctl start "$unit"
    fi
done
systemctl is-system-running"""


def _start_units_nspawn_tripped(host: dict) -> str:
    result = ssh.run_on(host["address"], RESTART_CGROUP_TRIPPED, sudo=True, timeout=120)
    print(result.stderr, end="", file=sys.stderr)
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "degraded"


def _wait_ready(hosts: list[dict]) -> None:
    """Poll each host until SSH answers and systemd has finished booting."""
    for host in hosts:
        def booted_state(host=host) -> str | None:
            if not backends.pid(host):
                sys.exit(f"lab: {host['name']} stopped while booting; see "
                         f"{config.HOSTS_DIR / host['name'] / 'console.log'}")
            return ssh.system_state(host["address"])

        timeout = config.BOOT_TIMEOUT_S[host["backend"]]
        try:
            current = waiting.wait_until(booted_state, timeout, f"{host['name']} to boot", interval=0.5,
                                         ready=lambda system: system not in (None, "initializing", "starting"))
        except waiting.TimedOut as error:
            sys.exit(f"lab: {host['name']} not ready after {timeout:.0f} s "
                     f"(state: {error.last or 'no SSH'}); see its console.log")
        if current == "degraded" and host["backend"] == "container":
            current = _start_units_nspawn_tripped(host)
        host["boot_seconds"] = round(time.monotonic() - host["started_at"], 1)
        print(f"lab: {host['name']} ({host['backend']}, {host['address']}) {current} "
              f"after {host['boot_seconds']} s", file=sys.stderr)
        if current != "running":
            try:
                failed = ssh.run_on(host["address"], "systemctl --failed --no-legend")
            except subprocess.TimeoutExpired:  # only a report: the host is up all the same
                print("lab: `systemctl --failed` did not answer in time", file=sys.stderr)
            else:
                print(failed.stdout, end="")
                print(failed.stderr, end="", file=sys.stderr)


def up(backend: str, nodes: int, nice: int = 0, scenario: str = "default") -> None:
    _require_root()
    if not 1 <= nodes <= config.MAX_NODES:
        sys.exit(f"lab: --nodes must be between 1 and {config.MAX_NODES}")
    if backend not in config.SCENARIOS[scenario]:
        sys.exit(f"lab: the {scenario} scenario has no {backend} hosts; it has "
                 f"{', '.join(config.SCENARIOS[scenario])}")
    image_dir = image.ensure_image()
    with state.editing() as current:
        network.setup(current)
    starting = []
    for index in range(1, nodes + 1):
        name = config.host_name(backend, index, scenario)
        # The state is read again for each host and saved at once: another `lab up` may be booting.
        with state.editing() as current:
            host = current["hosts"].get(name)
            if host and backends.pid(host):
                continue
            host = {"name": name, "backend": backend, "scenario": scenario, "nice": nice,
                    "address": str(config.host_address(backend, index, scenario)), "started_at": time.monotonic()}
            if current["hosts"].get(name):
                backends.stop(host)
            ssh.forget_host(host["address"])
            backends.start(host, image_dir, nice)
            current["hosts"][name] = host
        starting.append(host)
    _wait_ready(starting)
    with state.editing() as current:
        for host in starting:
            host.pop("started_at")
            current["hosts"][host["name"]] = host
        ssh.write_config(list(current["hosts"].values()))
    status()


def power(name: str, on: bool, clean: bool = False) -> None:
    """One host off (its disk kept), unplugged unless `clean` (a shutdown), or on again."""
    _require_root()
    with state.editing() as current:
        host = current["hosts"].get(name)
        if not host:
            sys.exit(f"lab: no host named {name!r}; `lab status` lists them")
        if not on:
            backends.power_off(host, unplug=not clean)
            print(f"lab: {name} {'shut down' if clean else 'unplugged'}", file=sys.stderr)
            return
        if backends.pid(host):
            return
        host["started_at"] = time.monotonic()
        backends.start(host, image.ensure_image(), host.get("nice", 0))
    _wait_ready([host])
    with state.editing() as current:
        host.pop("started_at")
        current["hosts"][name] = host


def down() -> None:
    _require_root()
    with state.locked():
        current = state.load()
        for host in current["hosts"].values():
            backends.stop(host)
            ssh.forget_host(host["address"])
        network.teardown(current)
        config.STATE_FILE.unlink(missing_ok=True)
        config.SSH_CONFIG.unlink(missing_ok=True)
    left = leftovers()
    if left:
        sys.exit("lab: down left these behind: " + "; ".join(left))
    print("lab: down; no host, bridge, route or rule of the lab is left", file=sys.stderr)


def leftovers() -> list[str]:
    """Anything of the lab still on the machine: processes, mounts, host overlays, network."""
    found = network.leftovers()
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and any(a.startswith(b"--machine=lab-") or a == b"lab-vm" or
                                        (a.startswith(b"lab-") and b"qemu" in argv[0]) for a in argv):
            found.append(f"process {entry.name} {argv[0].decode(errors='replace')}")
    mounts = Path("/proc/mounts").read_text()
    found += [f"mount {line.split()[1]}" for line in mounts.splitlines() if str(config.HOSTS_DIR) in line]
    if config.HOSTS_DIR.exists():
        found += [f"host directory {d}" for d in config.HOSTS_DIR.iterdir()]
    return found


def status() -> None:
    current = state.load()
    if not current["hosts"]:
        print("lab: no hosts (run `lab up`)")
        return
    print(f"{'name':6} {'backend':9} {'address':12} {'state':12} {'memory':>9}")
    for name, host in sorted(current["hosts"].items()):
        pid = backends.pid(host)
        system = (ssh.system_state(host["address"]) or "no SSH") if pid else "stopped"
        memory = f"{state.memory_bytes(pid) / 2**20:.0f} MiB" if pid else "-"
        print(f"{name:6} {host['backend']:9} {host['address']:12} {system:12} {memory:>9}")


def ssh_into(name: str, command: list[str]) -> None:
    host = state.load()["hosts"].get(name)
    if not host:
        sys.exit(f"lab: no host named {name!r}; `lab status` lists them")
    argv = ssh.ssh_command(host["address"], *command)
    os.execvp(argv[0], argv)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start lab hosts (twice is harmless)")
    up_parser.add_argument("--backend", choices=sorted(config.BACKENDS), default="container")
    up_parser.add_argument("--nodes", type=int, default=2)
    up_parser.add_argument("--scenario", choices=sorted(config.SCENARIOS), default="default",
                           help="which set of hosts: `alternative` boots alt1.. for inventory/lab_alternative.py")
    up_parser.add_argument("--nice", type=int, default=0, choices=range(20), metavar="0-19",
                           help="CPU priority of the VMs (qemu): 19 runs them on what the "
                                "rest of the machine leaves idle")
    commands.add_parser("down", help="stop every lab host and remove what the lab added")
    commands.add_parser("status", help="list lab hosts, their state and memory")
    power_parser = commands.add_parser("power", help="unplug one host (its disk kept), or power it on again")
    power_parser.add_argument("state", choices=("off", "on"))
    power_parser.add_argument("name")
    power_parser.add_argument("--clean", action="store_true", help="off: shut it down instead of unplugging it")
    ssh_parser = commands.add_parser("ssh", help="open a shell (or run a command) on a lab host")
    ssh_parser.add_argument("name")
    ssh_parser.add_argument("remote_command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.backend, args.nodes, args.nice, args.scenario)
    elif args.command == "down":
        down()
    elif args.command == "status":
        status()
    elif args.command == "power":
        power(args.name, args.state == "on", args.clean)
    else:
        ssh_into(args.name, args.remote_command)
