"""Last: `lab down` removes everything the lab added to this machine."""

import pytest

from lab.cli import leftovers
from tests.lab.harness import BACKGROUND_VM, lab

pytestmark = pytest.mark.lab


def test_lab_down_leaves_no_process_bridge_rule_or_overlay(container_lab):
    BACKGROUND_VM.stop()  # done already if the VM tests ran
    result = lab("down")
    assert result.returncode == 0, result.stderr
    assert leftovers() == []
