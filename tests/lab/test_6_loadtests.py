"""The load tests against the lab's deploy: headless with the SLO gate, the web UI through its
HTTP API, the capacity finder. Every run is bounded in time and requests."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lab.waiting import wait_until
from tests.lab.harness import ROOT

pytestmark = pytest.mark.lab
LOCUST = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py")]


def _env(api_key: str) -> dict:
    env = dict(os.environ, NAS_AI_API_KEY=api_key)
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)  # Locust itself needs gevent's patching
    return env


def test_headless_run_meets_the_slo_and_leaves_reports(gateway_url, api_key, tmp_path):
    prefix = tmp_path / "run"
    run = subprocess.run([*LOCUST, "--host", gateway_url, "--headless", "-u", "2", "-r", "2", "-t", "45s",
                          "--max-requests", "300", "--csv", str(prefix), "--csv-full-history",
                          "--html", f"{prefix}.html", "--only-summary"],
                         env=_env(api_key), capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "SLO met" in run.stderr
    stats = Path(f"{prefix}_stats.csv").read_text()
    for row in ("short_question", "time_to_first_token short_question", "tokens_per_second", "inter_token_latency"):
        assert row in stats
    assert "time_to_first_token short_question" in Path(f"{prefix}.html").read_text()
    plot = subprocess.run([sys.executable, "-m", "loadtests.plot", str(prefix)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert plot.returncode == 0, plot.stderr
    assert Path(f"{prefix}_llm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_impossible_threshold_fails_the_run_and_says_which(gateway_url, api_key, tmp_path):
    run = subprocess.run([*LOCUST, "--host", gateway_url, "--headless", "-u", "2", "-r", "2", "-t", "15s",
                          "--max-requests", "100", "--only-summary", "--slo-short-question-ms", "1"],
                         env=_env(api_key), capture_output=True, text=True, timeout=90, check=False)
    assert run.returncode == 1
    assert "SLO broken: short_question" in run.stderr
    assert "> 1 ms" in run.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_web_ui_drives_a_run_and_shows_llm_figures(gateway_url, api_key):
    port = _free_port()
    ui = subprocess.Popen([*LOCUST, "--host", gateway_url, "--web-host", "127.0.0.1", "--web-port", str(port),
                           "--max-requests", "200", "--stream-share", "1"],
                          env=_env(api_key), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(base, timeout=2).status_code == 200, 30, f"Locust's web UI at {base}",
                   interval=0.2, retry_on=(httpx.TransportError,))
        started = httpx.post(f"{base}/swarm", data={"user_count": 2, "spawn_rate": 2, "host": gateway_url})
        assert started.json()["success"], started.text

        def llm_figures_shown(rows: list[dict]) -> bool:
            names = {row["name"] for row in rows}
            return any(n.startswith("time_to_first_token") for n in names) and "tokens_per_second" in names

        rows = wait_until(lambda: httpx.get(f"{base}/stats/requests").json()["stats"], 60,
                          "Locust's statistics to show time_to_first_token and tokens_per_second", interval=1,
                          ready=llm_figures_shown)
        ttft = next(row for row in rows if row["name"].startswith("time_to_first_token"))
        assert ttft["num_requests"] >= 1 and ttft["median_response_time"] > 0
        httpx.get(f"{base}/stop")
    finally:
        ui.terminate()
        ui.wait(timeout=30)


def test_capacity_finder_reports_requests_per_day(gateway_url, api_key, tmp_path):
    run = subprocess.run([sys.executable, "-m", "loadtests.capacity", "--host", gateway_url,
                          "--users", "1,2", "--step-seconds", "15", "--max-seconds", "100",
                          "--out", str(tmp_path)],
                         cwd=ROOT, env=_env(api_key), capture_output=True, text=True, timeout=150, check=False)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert "requests/day" in run.stdout and "the article's 500 a day" in run.stdout
