"""Every template renders, and what it renders passes its daemon's own check."""

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from lab.waiting import wait_until
from tasks import firewall, gateway
from tasks.rendering import render
from tasks.settings import DeployError, resolve

needs_nginx = pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed here")


def _nginx_test(tmp_path, site: str) -> subprocess.CompletedProcess:
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/site.conf;\n}}\n")
    return subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True)


def _site(tmp_path, data=None, tls=None, api_keys=None):
    keys = tmp_path / "keys.map"
    settings = resolve("nas1", data or {})
    clients = gateway.clients(api_keys or {"alice": "sk-alice-0123456789abcdef", "bob": "sk-bob-0123456789abcdefg"},
                              settings)
    keys.write_text(gateway.keys_map(clients))
    return gateway.site_config(settings, clients, ["127.0.0.1:8080", "10.213.0.12:8080"],
                               "backend-key-xyz", tls, keys_file=str(keys))


@needs_nginx
def test_gateway_config_passes_nginx_t(tmp_path):
    site = _site(tmp_path)
    result = _nginx_test(tmp_path, site)
    assert result.returncode == 0, result.stderr
    assert "least_conn;" in site and "zone nas_ai_engines" in site
    assert "server 10.213.0.12:8080 max_fails=3 fail_timeout=10s;" in site
    assert "rate=10r/m" in site and "burst=5 nodelay" in site
    assert "limit_conn nas_ai_conn_1 2;" in site and "nas_ai_rate_2" not in site
    assert "proxy_buffering off;" in site and "server_tokens off;" in site
    # A failed try moves to another engine only within 10 s: a long generation is never run twice.
    assert "proxy_next_upstream error timeout http_503 non_idempotent;" in site
    assert "proxy_next_upstream_timeout 10s;" in site
    assert '"\\\\alice" 6;' in site  # Retry-After: one request's worth of the 10/minute rate


@needs_nginx
def test_gateway_config_with_tls_passes_nginx_t(tmp_path):
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=nas1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    site = _site(tmp_path, {"gateway_tls_port": 8443}, {"certificate": str(cert), "key": str(key)})
    result = _nginx_test(tmp_path, site)
    assert result.returncode == 0, result.stderr
    assert "listen 8443 ssl default_server;" in site


@needs_nginx
def test_the_worker_shutdown_timeout_belongs_to_nginx_main_context(tmp_path):
    (tmp_path / "main.conf").write_text(render("gateway/nas-ai-main.conf.j2", shutdown_timeout_s=660))
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                                         f"include {tmp_path}/main.conf;\nevents {{}}\nhttp {{}}\n")
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@needs_nginx
def test_a_broken_gateway_config_fails_nginx_t(tmp_path):
    """The check that guards every reload does catch a bad config."""
    result = _nginx_test(tmp_path, _site(tmp_path).replace("least_conn;", "least_conn"))
    assert result.returncode != 0


def test_api_keys_are_never_in_the_site_config(tmp_path):
    assert "sk-alice" not in _site(tmp_path)


@pytest.mark.parametrize("keys, message", [
    ({"alice": "short"}, "24 or more printable ASCII characters"),
    ({"alice": "sk-clé-0123456789abcdef"}, "24 or more printable ASCII characters"),
    ({"alice": 'sk-with"quote-0123456789abc'}, "without spaces, quotes"),
    ({"al ice": "sk-0123456789abcdef"}, "client name"),
    ({}, "gateway_api_keys is empty"),
])
def test_bad_api_keys_are_refused(keys, message):
    with pytest.raises(DeployError, match=message):
        gateway.clients(keys, resolve("nas1", {}))


@needs_nginx
def test_each_client_gets_its_own_limits(tmp_path):
    site = _site(tmp_path, api_keys={
        "default": "sk-default-0123456789abcdef",  # the generated key's name, a keyword of nginx's map
        "alice": "sk-alice-0123456789abcdef",
        "bob": {"key": "sk-bob-0123456789abcdefg", "rate_per_minute": 2, "rate_burst": 0},
        "carol": {"key": "sk-carol-0123456789abcdef", "concurrent": 1}})
    result = _nginx_test(tmp_path, site)
    assert result.returncode == 0, result.stderr
    # Three sets of limits, each its own zones, each client in one of them.
    assert re.findall(r"zone=nas_ai_rate_\d+:1m rate=(\d+)r/m", site) == ["2", "10", "10"]
    assert '"\\\\default" "default";' in site
    assert site.count("limit_req zone=nas_ai_rate_") == 3 and site.count("limit_conn nas_ai_conn_") == 3
    # Sorted by rate, burst, concurrency: bob (2/min, no burst), carol (1 at once), alice.
    assert "limit_req zone=nas_ai_rate_1;" in site  # nginx refuses burst=0: no burst is written
    assert "limit_conn nas_ai_conn_2 1;" in site and "limit_conn nas_ai_conn_3 2;" in site
    assert '"\\\\bob" 30;' in site and '"\\\\alice" 6;' in site


@pytest.mark.parametrize("entry, message", [
    ({"key": "sk-bob-0123456789abcdefg", "rate_per_minute": 0}, r"\['bob'\]\['rate_per_minute'\] is 0; it must be at least 1"),
    ({"key": "sk-bob-0123456789abcdefg", "concurrent": "2"}, r"\['concurrent'\] must be int"),
    ({"key": "sk-bob-0123456789abcdefg", "rate": 5}, "unknown rate; a client takes key, rate_per_minute"),
    ({"rate_per_minute": 5}, "must be a string of 24 or more"),
])
def test_bad_client_limits_are_refused(entry, message):
    with pytest.raises(DeployError, match=message):
        gateway.clients({"bob": entry}, resolve("nas1", {}))


def test_firewall_opens_each_port_to_its_callers_only():
    rules = firewall.rules([{"number": 8080, "sources": ["10.213.0.11", "10.213.0.11", "fd00::12"], "why": "engine"},
                            {"number": 9100, "sources": [], "why": "node_exporter"},
                            {"number": 80, "sources": firewall.EVERYONE, "why": "gateway"}])
    assert 'ip saddr { 10.213.0.11 } tcp dport 8080 accept' in rules
    assert 'ip6 saddr { fd00::12 } tcp dport 8080 accept' in rules
    assert "tcp dport 8080 reject with tcp reset" in rules
    assert 'iif "lo" tcp dport 9100 accept' in rules and "tcp dport 9100 reject with tcp reset" in rules
    assert "\n        tcp dport 80 accept\n" in rules and "dport 80 reject" not in rules
    assert "saddr {  }" not in rules
    assert "flush ruleset" not in rules  # other tables of the host are left alone


@pytest.mark.skipif(not shutil.which("nft") or os.geteuid() != 0, reason="nft --check needs nft and root")
def test_firewall_rules_pass_nft_check(tmp_path):
    rules = tmp_path / "rules.nft"
    rules.write_text(firewall.rules([{"number": 8080, "sources": ["10.213.0.11", "fd00::12"], "why": "engine"},
                                     {"number": 80, "sources": firewall.EVERYONE, "why": "gateway"}]))
    result = subprocess.run(["nft", "--check", "-f", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_exporters_filter_their_callers_on_their_own_unit():
    text = render("monitoring/exporter-firewall.conf.j2", allowed=["10.213.0.11", "fd00::11"])
    assert "IPAddressDeny=any\nIPAddressAllow=localhost 10.213.0.11 fd00::11\n" in text


def test_a_host_name_that_does_not_resolve_is_a_deploy_error_naming_it():
    with pytest.raises(DeployError, match="`nas-nowhere.invalid` does not resolve"):
        firewall.addresses_of("nas-nowhere.invalid")


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool is not installed here")
def test_prometheus_config_passes_promtool(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(render("monitoring/nas-ai.rules.yml.j2", ttft_p99_slo_s=2.0))
    config = tmp_path / "prometheus.yml"
    config.write_text(render("monitoring/prometheus.yml.j2", scrape_interval="15s", rules_file=str(rules),
                             prometheus_address="127.0.0.1:9090", alertmanager_address="127.0.0.1:9093",
                             jobs={"node": [{"address": "127.0.0.1:9100", "node": "nas1"},
                                            {"address": "10.213.0.12:9100", "node": "nas2"}],
                                   "engine": [{"address": "127.0.0.1:8080", "node": "nas1"}]}))
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not shutil.which("amtool"), reason="amtool is not installed here")
@pytest.mark.parametrize("webhook", [None, "http://ntfy.local/nas-alerts"])
def test_alertmanager_config_passes_amtool(tmp_path, webhook):
    config = tmp_path / "alertmanager.yml"
    config.write_text(render("monitoring/alertmanager.yml.j2", webhook=webhook))
    result = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed here")
def test_engine_unit_is_hardened(tmp_path):
    unit = tmp_path / "nas-ai-engine.service"
    unit.write_text(render("service/nas-ai-engine.service.j2", state_dir="nas-ai-engine", user="nas-ai",
                           app_dir="/opt/nas-ai/engine/app", python="/usr/bin/python3",
                           config="/etc/nas-ai/engine.json", threads=3, ready_timeout=300, probe_timeout=60, reload_timeout=960,
                           server="llama-server", runtime_dir="nas-ai-engine",
                           firewall_unit="nas-ai-firewall.service", allowed_addresses=["10.213.0.11", "fd00::12"]))
    text = unit.read_text()
    assert "BindsTo=nas-ai-firewall.service" in text
    # The article's reload swaps the model: the command waits for the front's verdict.
    assert "ExecReload=/usr/bin/python3 -m nas_ai_engine reload --config /etc/nas-ai/engine.json --pid $MAINPID" in text
    assert "IPAddressDeny=any\nIPAddressAllow=localhost 10.213.0.11 fd00::12\n" in text
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20",
                             "--no-pager", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]


def test_slice_carries_the_limits():
    text = render("service/nasai.slice.j2", memory_high=5798205849, memory_max=6442450944,
                  cpu_quota_percent=350, cpu_weight=1000)
    assert "MemoryMax=6442450944" in text and "CPUQuota=350%" in text and "CPUWeight=1000" in text


def test_client_names_that_differ_in_case_alone_are_refused():
    with pytest.raises(DeployError, match="differ in case alone"):
        gateway.clients({"bob": "sk-bob-0123456789abcdefg", "Bob": "sk-Bob-0123456789abcdefg"}, resolve("nas1", {}))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _running_gateway(tmp_path, data: dict, keys: dict, tls: dict | None = None, engines: list[str] | None = None):
    """The real nginx with the rendered site, on free ports, no engine behind it (unless `engines`
    are given): a request that passes the gateway's checks gets 503 (no engine); one refused gets
    its 401, 429 or 301."""
    settings = resolve("nas1", {"gateway_port": _free_port(), "gateway_tls_port": _free_port(), **data})
    clients = gateway.clients(keys, settings)
    (tmp_path / "keys.map").write_text(gateway.keys_map(clients))
    (tmp_path / "site.conf").write_text(gateway.site_config(
        settings, clients, engines or [f"127.0.0.1:{_free_port()}"], "backend-key", tls, keys_file=str(tmp_path / "keys.map"),
        access_log=str(tmp_path / "access.log"), stub_status_address=f"127.0.0.1:{_free_port()}"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  client_body_temp_path {tmp_path}/body;\n  proxy_temp_path {tmp_path}/proxy;\n"
        f"  include {tmp_path}/site.conf;\n}}\n")
    nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
    try:
        wait_until(lambda: _answer(f"http://127.0.0.1:{settings.gateway_port}/v1/models", "nothing")[0] in (401, 403),
                   10, "nginx to answer", retry_on=(OSError,))
        yield settings
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


@needs_nginx
def test_a_running_nginx_limits_each_client_by_its_own_zone(tmp_path):
    """A limited request is 429 before it is proxied, an allowed one 503. Names that nginx could
    misread (`default`, a keyword of its maps; `n8n`, whose escaped form starts with \\n) are
    limited like any other."""
    slow = {"rate_per_minute": 2, "rate_burst": 0}
    keys = {"default": {"key": "sk-default-0123456789abcdef", **slow}, "n8n": {"key": "sk-n8n-0123456789abcdefg", **slow},
            "alice": "sk-alice-0123456789abcdef"}
    with _running_gateway(tmp_path, {}, keys) as settings:
        url = f"http://127.0.0.1:{settings.gateway_port}/v1/models"
        assert [_answer(url, keys["alice"])[0] for _ in range(2)] == [503, 503]
        for name in ("default", "n8n"):
            (first, _, _), (second, headers, _) = _answer(url, keys[name]["key"]), _answer(url, keys[name]["key"])
            assert (first, second, headers.get("Retry-After")) == (503, 429, "30"), name


@needs_nginx
def test_a_running_nginx_compares_keys_exactly(tmp_path):
    key = "sk-nas-AbC_d-9.x+y$z0123"  # regex characters, mixed case
    with _running_gateway(tmp_path, {}, {"alice": key}) as settings:
        url = f"http://127.0.0.1:{settings.gateway_port}/v1/models"
        assert _answer(url, key)[0] == 503
        assert _answer(url, key, scheme="bearer")[0] == 503  # the scheme's case is free
        for wrong in (key.upper(), key.lower(), key[:-1], key + "0", key.replace(".", "a"), "sk-nas-.*"):
            assert _answer(url, wrong)[0] == 401, wrong
        assert _answer(url, "sk-nas-wrong-0123456789")[1].get("WWW-Authenticate") == 'Bearer realm="nas-ai"'



@needs_nginx
def test_a_running_nginx_slows_key_guessing_by_address_alone(tmp_path):
    key = "sk-alice-0123456789abcdef"
    with _running_gateway(tmp_path, {"gateway_auth_failure_burst": 3}, {"alice": key}) as settings:
        url = f"http://127.0.0.1:{settings.gateway_port}/v1/models"
        # The probe that saw nginx up was the first failure; 3 more in the burst, then 429s.
        answers = [_answer(url, f"sk-guess-{n:016d}") for n in range(5)]
        assert [status for status, _, _ in answers] == [401, 401, 401, 429, 429]
        _, headers, body = answers[-1]
        assert headers.get("Retry-After") == "6"  # one request's worth of 10 a minute
        assert "without a valid API key from this address" in body
        assert _answer(url, key)[0] == 503  # a client with its key is not slowed


@needs_nginx
def test_a_running_nginx_forwards_the_allow_list_alone(tmp_path):
    """Served paths reach the (absent) engine: 503; every other path, encoded or dotted variants
    of served ones included, is a JSON 404 at the gateway, with a valid key too."""
    key = "sk-alice-0123456789abcdef"
    with _running_gateway(tmp_path, {}, {"alice": key}) as settings:
        base = f"http://127.0.0.1:{settings.gateway_port}"
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/chat//completions"):
            assert _answer(base + path, key)[0] == 503, path
        for path in ("/v1/messages", "/v1/responses", "/v1/embeddings", "/v1/engines/copilot-codex/completions",
                     "/completion", "/props", "/slots", "/metrics", "/v1/models/../messages",
                     "/v1/completions%2F..%2Fmessages", "/v1/chat/completions/", "/V1/models", "/v1/",
                     "/v1/models%0A", "/v1/completions%0a"):  # PCRE's $ would match before the newline
            status, headers, body = _answer(base + path, key)
            assert (status, json.loads(body)["error"]["code"]) == (404, "not_found"), path
            assert headers["Content-Type"] == "application/json"


@needs_nginx
def test_with_tls_the_plain_port_serves_no_api_and_points_to_tls(tmp_path):
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=nas1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    api_key = "sk-alice-0123456789abcdef"
    with _running_gateway(tmp_path, {}, {"alice": api_key}, {"certificate": str(cert), "key": str(key)}) as settings:
        # An API request is refused with the TLS URL (a redirect would turn a POST into a GET
        # without its key); anything else is redirected.
        status, _, body = _answer(f"http://127.0.0.1:{settings.gateway_port}/v1/models", api_key)
        assert status == 403 and f"https://127.0.0.1:{settings.gateway_tls_port}/v1/models" in body, body
        status, headers, _ = _answer(f"http://127.0.0.1:{settings.gateway_port}/", api_key)
        assert (status, headers["Location"]) == (301, f"https://127.0.0.1:{settings.gateway_tls_port}/")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        assert _answer(f"https://127.0.0.1:{settings.gateway_tls_port}/v1/models", api_key, context=context)[0] == 503


def _answer(url: str, key: str, scheme: str = "Bearer", context=None) -> tuple[int, dict, str]:
    """(status, headers, body) of a GET with this key, redirects not followed."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None
    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers={"Authorization": f"{scheme} {key}"})
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


class _Engine(http.server.BaseHTTPRequestHandler):
    """An engine that answers every request with its own name (the server's)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"engine": self.server.name, "session": self.headers.get("X-Nas-Ai-Session")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _engines(count: int, handler: type[_Engine] = _Engine):
    servers = []
    for index in range(count):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.name = f"engine-{index}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield servers
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _engine_of(port: int, key: str, body: dict, headers: dict | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                                              **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["engine"]


CHAT = {"model": "any", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}


@needs_nginx
def test_the_engine_learns_a_requests_session_from_the_gateway_alone(tmp_path):
    """X-Nas-Ai-Session, which the engine's front keeps a conversation's slot by: the client's
    name and its session, set by the gateway; a client's own header is replaced, or dropped."""
    key = "sk-alice-0123456789abcdef"
    with _engines(1) as engines, _running_gateway(
            tmp_path, {"gateway_rate_per_minute": 60000, "gateway_rate_burst": 1000}, {"alice": key},
            engines=[f"127.0.0.1:{e.server_address[1]}" for e in engines]) as settings:
        def session_seen(headers):
            request = urllib.request.Request(f"http://127.0.0.1:{settings.gateway_port}/v1/chat/completions",
                                             data=json.dumps(CHAT).encode(), headers={
                                                 "Authorization": f"Bearer {key}", "Content-Type": "application/json",
                                                 **headers})
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)["session"]

        assert session_seen({"X-Session-Id": "chat-1"}) == "alice:chat-1"
        assert session_seen({"X-OpenWebUI-Chat-Id": "c7", "X-Nas-Ai-Session": "bob:chat-1"}) == "alice:c7"
        assert session_seen({"X-Nas-Ai-Session": "bob:chat-1"}) is None
        assert session_seen({}) is None


@needs_nginx
def test_a_session_goes_back_to_one_engine_and_requests_without_one_to_either(tmp_path):
    """The session: the X-Session-Id header, else Open WebUI's chat id, else its user id. Each
    session's requests land on one engine; requests without one take turns, whatever their body
    says (nginx picks the engine before it reads the body)."""
    key = "sk-alice-0123456789abcdef"
    with _engines(2) as engines, _running_gateway(
            tmp_path, {"gateway_rate_per_minute": 60000, "gateway_rate_burst": 1000}, {"alice": key},
            engines=[f"127.0.0.1:{e.server_address[1]}" for e in engines]) as settings:
        ask = functools.partial(_engine_of, settings.gateway_port, key)
        for header in ("X-Session-Id", "X-OpenWebUI-Chat-Id", "X-OpenWebUI-User-Id"):
            landed = {n: {ask(CHAT, {header: f"chat-{n}"}) for _ in range(3)} for n in range(32)}
            assert all(len(engines_of_session) == 1 for engines_of_session in landed.values()), (header, landed)
            # 32 sessions over two engines: both are used (the ring is random with the engines'
            # ports; the chance of one alone is about 2 in 4 billion).
            assert {e for seen in landed.values() for e in seen} == {"engine-0", "engine-1"}, (header, landed)
        # X-Session-Id wins over Open WebUI's headers, its chat over its user.
        assert len({ask(CHAT, {"X-Session-Id": "one", "X-OpenWebUI-Chat-Id": f"c{n}"}) for n in range(8)}) == 1
        assert len({ask(CHAT, {"X-OpenWebUI-Chat-Id": "one", "X-OpenWebUI-User-Id": f"u{n}"}) for n in range(8)}) == 1
        assert {ask(CHAT) for _ in range(6)} == {"engine-0", "engine-1"}  # idle engines take turns (least_conn)
        assert {ask({**CHAT, "user": "alice", "prompt_cache_key": "k"}) for _ in range(6)} == {"engine-0", "engine-1"}


@needs_nginx
def test_a_sessions_engine_gone_its_requests_go_to_the_other(tmp_path):
    key = "sk-alice-0123456789abcdef"
    with _engines(2) as engines, _running_gateway(
            tmp_path, {"gateway_rate_per_minute": 60000, "gateway_rate_burst": 1000}, {"alice": key},
            engines=[f"127.0.0.1:{e.server_address[1]}" for e in engines]) as settings:
        ask = functools.partial(_engine_of, settings.gateway_port, key, CHAT)
        first = ask({"X-Session-Id": "long-chat"})
        gone = next(e for e in engines if e.name == first)
        gone.shutdown()
        gone.server_close()
        assert {ask({"X-Session-Id": "long-chat"}) for _ in range(4)} == {
            next(e.name for e in engines if e is not gone)}


class _KeepAliveEngine(_Engine):
    """An engine that would keep a connection open for the next request (HTTP/1.1), and counts
    the connections it is given and those still open."""
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.server.open += 1

    def finish(self):
        super().finish()
        with self.server.lock:
            self.server.open -= 1


@needs_nginx
def test_the_gateway_keeps_no_idle_connection_to_an_engine(tmp_path):
    """Each request through the gateway is a connection of its own to the engine, closed once it
    is answered: none waits idle for the next request, which, sent on it to a host that lost
    power, would wait for the host's return instead of going to another engine."""
    key = "sk-alice-0123456789abcdef"
    with _engines(1, _KeepAliveEngine) as (server,):
        server.connections, server.open, server.lock = 0, 0, threading.Lock()
        with _running_gateway(tmp_path, {"gateway_rate_per_minute": 60000, "gateway_rate_burst": 1000},
                              {"alice": key}, engines=[f"127.0.0.1:{server.server_address[1]}"]) as settings:
            answered = [_engine_of(settings.gateway_port, key, CHAT) for _ in range(3)]
            closed = wait_until(lambda: server.open == 0, 5, "the gateway to close its connections to the engine",
                                interval=0.05)
    assert answered == ["engine-0"] * 3
    assert server.connections == 3
    assert closed
