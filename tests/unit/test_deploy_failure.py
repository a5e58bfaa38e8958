"""The message a failed deploy gives in a lab test: the failing operation and its error output,
read from pyinfra's real output (recorded from a deploy on the lab whose second operation fails)."""

import subprocess
from pathlib import Path

from tests.lab.harness import deploy_failure

RECORDED = (Path(__file__).parent / "data" / "deploy_failure.txt").read_text()


def _failed(stderr: str, stdout: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(["pyinfra"], 1, stdout=stdout, stderr=stderr)


def test_names_the_failing_operation_with_each_hosts_error_output():
    message = deploy_failure(_failed(RECORDED))
    lines = message.splitlines()
    assert lines[0] == "deploy exited 1"
    assert lines[1] == "failing operation: Compile something that breaks"
    assert "[nas1] cc: error: boom at line 3" in message
    assert "[nas2] Error: executed 0 commands" in message
    assert "Harmless first" not in "\n".join(lines[:lines.index("last lines of the deploy's output:")])


def test_a_refusal_before_any_operation_shows_the_last_lines():
    refused = ("--> Loading config...\n--> Preparing operation files...\n"
               "--> pyinfra error: nas1: the model does not fit: model 94 MiB + KV cache 45 MiB\n")
    message = deploy_failure(_failed(refused))
    assert "failing operation" not in message
    assert message.splitlines()[-1].endswith("the model does not fit: model 94 MiB + KV cache 45 MiB")


def test_padded_host_prefixes_are_read_too():
    # pyinfra pads the prefixes of shorter host names to the longest one's width.
    output = ("--> Starting operation: Unpack the installed engine\n"
              "    [nas1]     Success\n"
              "    [vm-long1] tar: engine.tar.gz: Cannot open: No such file or directory\n"
              "    [vm-long1] Error: executed 0 commands\n")
    message = deploy_failure(_failed(output))
    assert "failing operation: Unpack the installed engine" in message
    report = message.split("last lines of the deploy's output:")[0]
    assert "Cannot open" in report and "Success" not in report
