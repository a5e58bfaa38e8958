"""Every alert rule, proven by `promtool test rules` against series that should fire it."""

import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.rendering import render

CASES = Path(__file__).parent / "data" / "alert_rules_test.yml"


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool is not installed here")
def test_alert_rules_fire_as_specified(tmp_path):
    rules = tmp_path / "nas-ai.rules.yml"
    rules.write_text(render("monitoring/nas-ai.rules.yml.j2", ttft_p99_slo_s=2.0))
    cases = tmp_path / "cases.yml"
    cases.write_text(CASES.read_text().replace("[RULES]", f"[{rules}]"))
    result = subprocess.run(["promtool", "test", "rules", str(cases)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_case():
    rules = render("monitoring/nas-ai.rules.yml.j2", ttft_p99_slo_s=2.0)
    names = {line.split("alert:")[1].strip() for line in rules.splitlines() if "- alert:" in line}
    assert names and all(f"alertname: {name}" in CASES.read_text() for name in names)
