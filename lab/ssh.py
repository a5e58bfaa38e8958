"""The lab's SSH key and known hosts, and the one way the controller's tools run a command on a
host: on a lab host by its address, or on any host named in an ssh_config."""

import shlex
import subprocess
from pathlib import Path

from lab import config
from tasks import atomic


class RemoteCommandError(Exception):
    def __init__(self, host: str, command: str, result: subprocess.CompletedProcess):
        super().__init__(f"`{command}` failed on {host} (exit {result.returncode}): "
                         f"{result.stderr.strip()[-1500:]}")
        self.result = result


def ensure_key() -> Path:
    """The controller's key for the deploy user of every lab host; returns the public key."""
    config.SSH_DIR.mkdir(parents=True, exist_ok=True)
    if not config.SSH_KEY.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nas-ai-lab",
                        "-f", str(config.SSH_KEY)], check=True)
    return config.SSH_KEY.with_suffix(".pub")


def ssh_command(host: str, *command: str, ssh_config: str | Path | None = None,
                connect_timeout: int = 5) -> list[str]:
    """`ssh`'s arguments: to a lab address with the lab's key, or, given an ssh_config (the
    benchmark on the operator's own hosts), to a name of that file, which then decides alone."""
    if ssh_config is not None:
        return ["ssh", "-F", str(ssh_config), host, *command]
    return [
        "ssh", "-i", str(config.SSH_KEY), "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", f"UserKnownHostsFile={config.KNOWN_HOSTS}",
        # Lab hosts make new host keys each time they are created; `up` records them below.
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", "LogLevel=ERROR",
        f"{config.DEPLOY_USER}@{host}", *command,
    ]


def run_on(host: str, command: str, *, sudo: bool = False, check: bool = False, timeout: float = 60,
           ssh_config: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run the shell command line `command` on `host` (see ssh_command), its output captured as
    text; as root with `sudo`. `check`: RemoteCommandError, with its stderr, if it fails. SSH's
    own failures exit 255."""
    words = ["sudo", "sh", "-c", shlex.quote(command)] if sudo else [command]
    result = subprocess.run(ssh_command(host, *words, ssh_config=ssh_config),
                            capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RemoteCommandError(host, command, result)
    return result


def forget_host(address: str) -> None:
    if config.KNOWN_HOSTS.exists():
        subprocess.run(["ssh-keygen", "-R", address, "-f", str(config.KNOWN_HOSTS)],
                       capture_output=True, check=False)


def system_state(address: str) -> str | None:
    """`systemctl is-system-running` over SSH, or None while SSH does not answer (in time)."""
    try:
        result = run_on(address, "systemctl is-system-running")
    except subprocess.TimeoutExpired:
        return None
    if result.returncode == 255:
        return None
    return result.stdout.strip() or None


def write_config(hosts: list[dict]) -> None:
    """An ssh_config naming every lab host, for `ssh -F`, testinfra and other tools."""
    blocks = [f"Host {h['name']}\n    HostName {h['address']}\n    User {config.DEPLOY_USER}\n"
              f"    IdentityFile {config.SSH_KEY}\n    IdentitiesOnly yes\n"
              f"    UserKnownHostsFile {config.KNOWN_HOSTS}\n    StrictHostKeyChecking accept-new\n"
              f"    BatchMode yes\n    LogLevel ERROR\n" for h in hosts]
    atomic.write_text(config.SSH_CONFIG, "\n".join(blocks))
