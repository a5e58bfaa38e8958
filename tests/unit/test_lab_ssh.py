"""lab/ssh.py's run_on: the ssh command it runs, lab host or ssh_config host, and its failures."""

import shlex
import subprocess

import pytest

from lab import config, ssh


@pytest.fixture
def ran(monkeypatch):
    calls = []

    def run(argv, **options):
        calls.append((argv, options))
        return subprocess.CompletedProcess(argv, 1 if "false" in argv[-1] else 0, "out\n", "boom\n")

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_a_lab_address_gets_the_labs_key_and_user(ran):
    assert ssh.run_on("10.213.0.11", "systemctl is-system-running").stdout == "out\n"
    argv, options = ran[0]
    assert argv[:3] == ["ssh", "-i", str(config.SSH_KEY)]
    assert argv[-2:] == [f"{config.DEPLOY_USER}@10.213.0.11", "systemctl is-system-running"]
    assert options["capture_output"] and options["text"] and options["timeout"] == 60


def test_an_ssh_config_host_runs_as_root_with_the_command_quoted(ran):
    command = "cat '/etc/a b'; echo x"
    ssh.run_on("nas1", command, sudo=True, ssh_config="/home/me/.ssh/config", timeout=900)
    argv, options = ran[0]
    # ssh hands the remote shell its words joined: the command must reach `sh -c` as one word.
    assert argv == ["ssh", "-F", "/home/me/.ssh/config", "nas1", "sudo", "sh", "-c", shlex.quote(command)]
    assert options["timeout"] == 900


def test_check_raises_with_the_host_the_command_and_its_error_output(ran):
    assert ssh.run_on("nas1", "false").returncode == 1
    with pytest.raises(ssh.RemoteCommandError, match=r"`false` failed on nas1 \(exit 1\): boom"):
        ssh.run_on("nas1", "false", check=True)
