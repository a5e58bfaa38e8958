"""The lab's SSH key, known hosts and readiness checks."""

import subprocess
from pathlib import Path

from lab import config, state


def ensure_key() -> Path:
    """The controller's key for the deploy user of every lab host; returns the public key."""
    config.SSH_DIR.mkdir(parents=True, exist_ok=True)
    if not config.SSH_KEY.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nas-ai-lab",
                        "-f", str(config.SSH_KEY)], check=True)
    return config.SSH_KEY.with_suffix(".pub")


def ssh_command(address: str, *command: str, connect_timeout: int = 5) -> list[str]:
    return [
        "ssh", "-i", str(config.SSH_KEY), "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", f"UserKnownHostsFile={config.KNOWN_HOSTS}",
        # Lab hosts make new host keys each time they are created; `up` records them below.
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", "LogLevel=ERROR",
        f"{config.DEPLOY_USER}@{address}", *command,
    ]


def forget_host(address: str) -> None:
    if config.KNOWN_HOSTS.exists():
        subprocess.run(["ssh-keygen", "-R", address, "-f", str(config.KNOWN_HOSTS)],
                       capture_output=True)


def system_state(address: str) -> str | None:
    """`systemctl is-system-running` over SSH, or None while SSH does not answer."""
    result = subprocess.run(ssh_command(address, "systemctl", "is-system-running"),
                            capture_output=True, text=True, timeout=60)
    if result.returncode == 255:
        return None
    return result.stdout.strip() or None


def write_config(hosts: list[dict]) -> None:
    """An ssh_config naming every lab host, for `ssh -F`, testinfra and other tools."""
    blocks = [f"Host {h['name']}\n    HostName {h['address']}\n    User {config.DEPLOY_USER}\n"
              f"    IdentityFile {config.SSH_KEY}\n    IdentitiesOnly yes\n"
              f"    UserKnownHostsFile {config.KNOWN_HOSTS}\n    StrictHostKeyChecking accept-new\n"
              f"    BatchMode yes\n    LogLevel ERROR\n" for h in hosts]
    state.write_atomic(config.SSH_CONFIG, "\n".join(blocks))
