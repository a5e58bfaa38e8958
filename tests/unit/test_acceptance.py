"""The acceptance gate's parts that run without a lab: the site with an engine `down`, the edit
that lets it in (byte for byte the site rendered without the gate, so the next deploy changes
nothing), the gate's script against a real HTTP server, and the verdict on its figures."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tasks import acceptance, gateway
from tasks.settings import resolve
from tests.unit.test_templates import _nginx_test, needs_nginx

ENGINES = ["127.0.0.1:8080", "10.213.0.12:8080"]


def _site(tmp_path, pending=()):
    settings = resolve("nas1", {})
    clients = gateway.clients({"alice": "sk-alice-0123456789abcdef"}, settings)
    keys = tmp_path / "keys.map"
    keys.write_text(gateway.keys_map(clients))
    return gateway.site_config(settings, clients, ENGINES, "backend-key-xyz", None, keys_file=str(keys),
                               pending=tuple(pending))


@needs_nginx
def test_an_engine_not_accepted_is_down_and_the_site_passes_nginx_t(tmp_path):
    site = _site(tmp_path, pending=ENGINES[1:])
    assert "server 10.213.0.12:8080 max_fails=3 fail_timeout=10s down;" in site
    assert "server 127.0.0.1:8080 max_fails=3 fail_timeout=10s;" in site
    result = _nginx_test(tmp_path, site)
    assert result.returncode == 0, result.stderr


def test_accepting_an_engine_gives_the_site_the_next_deploy_renders(tmp_path):
    site_path, accepted_path = tmp_path / "nas-ai.conf", tmp_path / "accepted.json"
    site_path.write_text(_site(tmp_path, pending=ENGINES))
    accepted_path.write_text("[]\n")
    for engine, still_pending in ((ENGINES[1], ENGINES[:1]), (ENGINES[0], [])):
        for command, path in (("site", site_path), ("list", accepted_path)):
            subprocess.run([sys.executable, "-c", acceptance.ACCEPT_SCRIPT, command, str(path), engine], check=True)
        assert site_path.read_text() == _site(tmp_path, pending=still_pending)
    # What pending() writes at plan time for the same set: no change on the next deploy.
    assert accepted_path.read_text() == json.dumps(sorted(ENGINES)) + "\n"


class _Engine(BaseHTTPRequestHandler):
    """/v1/chat/completions with the backend key: one token, after `delay` seconds."""
    delay = 0.0

    def do_POST(self):
        import time

        length = int(self.headers["Content-Length"])
        question = json.loads(self.rfile.read(length))
        time.sleep(self.delay)
        if self.headers.get("Authorization") != "Bearer backend-key-xyz" or not question["messages"]:
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"usage": {"completion_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_gate_script_asks_each_engine_and_reports_its_times_and_errors(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        questions = acceptance.questions(type("Plan", (), {"settings": resolve("nas1", {})})())
        payload = tmp_path / "gate.json"
        working = f"127.0.0.1:{server.server_address[1]}"
        payload.write_text(json.dumps({"engines": [working, "127.0.0.1:9"], "questions": questions,
                                       "key": "backend-key-xyz", "timeout_s": 10}))
        run = subprocess.run([sys.executable, "-c", acceptance.GATE_SCRIPT, str(payload)], capture_output=True,
                             text=True, check=True)
    finally:
        server.shutdown()
    results = {r["engine"]: r for r in map(json.loads, run.stdout.splitlines())}
    assert len(questions) == 4 and all(q["messages"][-1]["role"] == "user" for q in questions)
    assert len(results[working]["seconds"]) == 4 and results[working]["errors"] == []
    assert len(results["127.0.0.1:9"]["errors"]) == 4  # nothing listens there
    assert acceptance._verdict(results[working], 4, 3000) is None
    assert "4 of 4 short questions failed" in acceptance._verdict(results["127.0.0.1:9"], 4, 3000)


def test_the_verdict_judges_the_p95_against_the_limit():
    assert acceptance._verdict({"seconds": [0.5, 0.6, 0.7, 0.8], "errors": []}, 4, 3000) is None
    assert acceptance._verdict({"seconds": [0.5, 0.6, 0.7, 3.5], "errors": []}, 4, 3000) == \
        "p95 3500 ms > 3000 ms over 4 short questions"
