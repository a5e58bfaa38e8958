"""The mtail program that turns the gateway's access log into Prometheus counters, run by the real
mtail over lines recorded from the lab's nginx (200, 401, 413, 429, 500): its counts must be the
ones read from the same lines as JSON."""

import collections
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.rendering import render

RECORDED_LOG = Path(__file__).parent / "data" / "gateway_access.log"


def _mtail_counts(tmp_path: Path, log: Path) -> dict[tuple[str, str], float]:
    programs = tmp_path / "progs"
    programs.mkdir()
    (programs / "nas-ai-gateway.mtail").write_text(render("monitoring/nas-ai-gateway.mtail"))
    result = subprocess.run(["mtail", "--progs", str(programs), "--logs", str(log), "--one_shot",
                             "--one_shot_format", "prometheus", "--emit_prog_label=false"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    counts = {}
    for line in result.stdout.splitlines():
        if line.startswith("nas_ai_gateway_responses_total{"):
            labels, value = line.split("{", 1)[1].rsplit("} ", 1)
            fields = dict(part.split("=", 1) for part in labels.split(","))
            counts[(fields["status"].strip('"'), fields["client"].strip('"'))] = float(value)
    return counts


@pytest.mark.skipif(not shutil.which("mtail"), reason="mtail is not installed here")
def test_mtail_counts_every_answer_by_status_and_client(tmp_path):
    expected = collections.Counter()
    for line in RECORDED_LOG.read_text().splitlines():
        entry = json.loads(line)
        expected[(str(entry["status"]), entry["client"] or "none")] += 1
    assert {status for status, _ in expected} >= {"200", "401", "413", "429", "500"}
    assert _mtail_counts(tmp_path, RECORDED_LOG) == dict(expected)


@pytest.mark.skipif(not shutil.which("mtail"), reason="mtail is not installed here")
def test_lines_of_another_format_are_not_counted(tmp_path):
    log = tmp_path / "access.log"
    log.write_text('10.0.0.1 - - [25/Nov/2026:10:00:00 +0000] "GET /v1/models HTTP/1.1" 200 107 "-" "curl"\n')
    assert _mtail_counts(tmp_path, log) == {}
