"""Gateway: nginx in front of every engine of the inventory, with API keys and per-key limits."""

import math
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server

from tasks import acceptance, secrets, topology
from tasks.plan import Plan
from tasks.rendering import install_checked, left_role, put_text, render, running
from tasks.settings import DeployError, check_value

CONF_PATH = "/etc/nginx/conf.d/nas-ai.conf"
MAIN_CONF_PATH = "/etc/nginx/modules-enabled/50-nas-ai.conf"  # nginx's main context
PRIVATE_DIR = "/etc/nginx/nas-ai"
KEYS_FILE = f"{PRIVATE_DIR}/api-keys.map"
# 24 characters of a random base64 key hold 144 bits: guessing is hopeless at any rate.
MIN_KEY_CHARACTERS = 24
# nginx's connection counts for its exporter, on loopback only.
STUB_STATUS_ADDRESS = "127.0.0.1:8081"
# JSON lines, read by mtail for the gateway's answers by status (tasks/monitoring.py).
ACCESS_LOG = "/var/log/nginx/nas-ai.access.log"
SELF_SIGNED = {"certificate": f"{PRIVATE_DIR}/self-signed.crt", "key": f"{PRIVATE_DIR}/self-signed.key"}


# A client's own limits, each defaulting to the data key that sets every client's.
CLIENT_LIMITS = {"rate_per_minute": "gateway_rate_per_minute", "rate_burst": "gateway_rate_burst",
                 "concurrent": "gateway_concurrent_per_key"}


@dataclass(frozen=True)
class Client:
    name: str
    key: str
    rate_per_minute: int
    rate_burst: int
    concurrent: int


def clients(api_keys: dict, settings) -> list[Client]:
    """gateway_api_keys as clients: {name: key} or {name: {"key": key, "rate_per_minute": ..., "rate_burst":
    ..., "concurrent": ...}}, every limit checked against the spec of the data key it overrides."""
    found = []
    for name, entry in sorted(api_keys.items()):
        if not (isinstance(name, str) and name.replace("-", "").replace("_", "").isalnum()):
            raise DeployError(f"gateway_api_keys: client name {name!r} may hold letters, digits, - and _")
        entry = dict(entry) if isinstance(entry, dict) else {"key": entry}
        unknown = set(entry) - {"key", *CLIENT_LIMITS}
        if unknown:
            raise DeployError(f"gateway_api_keys[{name!r}]: unknown {', '.join(sorted(unknown))}; a client takes "
                              f"key, {', '.join(CLIENT_LIMITS)}")
        key = entry.get("key")
        if not (isinstance(key, str) and len(key) >= MIN_KEY_CHARACTERS and key.isascii() and key.isprintable()
                and " " not in key and '"' not in key and "\\" not in key):
            raise DeployError(f"gateway_api_keys[{name!r}] must be a string of {MIN_KEY_CHARACTERS} or more printable "
                              "ASCII characters without spaces, quotes or backslashes (HTTP clients send no others); "
                              "make one with: python3 -c 'import secrets; print(\"sk-\" + secrets.token_urlsafe(24))'")
        limits = {}
        for limit, setting in CLIENT_LIMITS.items():
            limits[limit] = entry.get(limit, getattr(settings, setting))
            problem = check_value(setting, limits[limit])
            if problem:
                raise DeployError(f"gateway_api_keys[{name!r}][{limit!r}] {problem} (as {setting})")
        # nginx's maps ignore case: `Bob` and `bob` would be one client.
        if any(other.name.lower() == name.lower() for other in found):
            raise DeployError(f"gateway_api_keys: client names {name!r} and another differ in case alone: "
                              "rename one")
        found.append(Client(name, key, **limits))
    if not found:
        raise DeployError("gateway_api_keys is empty: give at least one {name: key}")
    return found


def _regex_literal(text: str) -> str:
    r"""`text` matched literally by PCRE, written for nginx's config parser (which reads \\ as \)."""
    return "".join(char if char.isalnum() else "\\\\" + char for char in text)


def keys_map(clients: list[Client]) -> str:
    """"Bearer <key>" -> client name, for the 0600 file the site includes: a regex per key, as
    nginx's map strings ignore case. The scheme's case is free (RFC 9110), the key's exact."""
    return "".join(f'"~^(?i:Bearer) {_regex_literal(client.key)}$" "{client.name}";\n' for client in clients)


def _retry_after_s(rate_per_minute: int) -> int:
    """One request's worth of a rate."""
    return max(1, math.ceil(60 / rate_per_minute))


def limit_classes(clients: list[Client]) -> list[dict]:
    """Clients grouped by their limits: nginx needs one rate zone per rate."""
    classes: dict[tuple, list[str]] = {}
    for client in clients:
        classes.setdefault((client.rate_per_minute, client.rate_burst, client.concurrent), []).append(client.name)
    return [{"rate_per_minute": rate, "rate_burst": burst, "concurrent": concurrent, "clients": names,
             "retry_after_s": _retry_after_s(rate)}
            for (rate, burst, concurrent), names in sorted(classes.items())]


def site_config(settings, clients: list[Client], upstreams: list[str], backend_key: str, tls: dict | None,
                keys_file: str = KEYS_FILE, access_log: str = ACCESS_LOG,
                stub_status_address: str = STUB_STATUS_ADDRESS, pending: tuple = ()) -> str:
    return render(
        "gateway/nas-ai.conf.j2", keys_file=keys_file, upstreams=upstreams, pending=pending, backend_key=backend_key,
        port=settings.gateway_port, tls=tls, tls_port=settings.gateway_tls_port,
        max_body=settings.gateway_max_body, limits=limit_classes(clients),
        auth_failures_per_minute=settings.gateway_auth_failures_per_minute,
        auth_failure_burst=settings.gateway_auth_failure_burst,
        auth_failure_retry_after_s=_retry_after_s(settings.gateway_auth_failures_per_minute),
        read_timeout_s=settings.gateway_read_timeout_s, stub_status_address=stub_status_address, access_log=access_log)


def upstreams(plan: Plan) -> list[str]:
    port = plan.settings.engine_port
    return [topology.host_port(topology.address_from(engine, plan.host), port) for engine in topology.inference_hosts()]


def check(settings) -> None:
    """Preflight: the clients' keys and the TLS choice are usable."""
    clients(secrets.api_keys(settings.gateway_api_keys), settings)
    tls = settings.gateway_tls
    if tls is None or tls == "self-signed":
        return
    if not (isinstance(tls, dict) and set(tls) == {"certificate", "key"}):
        raise DeployError("gateway_tls must be None, 'self-signed' or {'certificate': path, 'key': path}")
    for part in ("certificate", "key"):
        if not (isinstance(tls[part], str) and Path(tls[part]).expanduser().is_file()):
            raise DeployError(f"gateway_tls {part} {tls[part]!r} is not a file on this controller")


def _tls(settings) -> dict | None:
    tls = settings.gateway_tls
    if tls is None:
        return None
    if tls == "self-signed":
        if not host.get_fact(File, path=SELF_SIGNED["certificate"]):
            server.shell(name="Generate a self-signed TLS certificate for the gateway", commands=[
                f"openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN={host.name} "
                f"-addext subjectAltName=DNS:{host.name},IP:{topology.lan_address(host)} "
                f"-keyout {SELF_SIGNED['key']} -out {SELF_SIGNED['certificate']}",
                f"chmod 0600 {SELF_SIGNED['key']}"])
        return SELF_SIGNED
    remote = {"certificate": f"{PRIVATE_DIR}/gateway.crt", "key": f"{PRIVATE_DIR}/gateway.key"}
    for part, mode in (("certificate", "0644"), ("key", "0600")):
        files.put(name=f"TLS {part}", src=str(Path(tls[part]).expanduser()), dest=remote[part], mode=mode)
    return remote


def configure(plan: Plan) -> None:
    settings = plan.settings
    # python3: the acceptance gate's questions are sent from here.
    apt.packages(name="Install nginx", packages=["nginx-light", "openssl", "python3"], no_recommends=True,
                 cache_time=24 * 3600)
    files.directory(name=f"Directory {PRIVATE_DIR}", path=PRIVATE_DIR, user="root", group="root",
                    mode="0700")
    gateway_clients = clients(secrets.api_keys(settings.gateway_api_keys), settings)
    keys = put_text("Gateway API keys (0600)", keys_map(gateway_clients), KEYS_FILE, "0600")
    default_site = files.link(name="No Debian default site on the gateway's port",
                              path="/etc/nginx/sites-enabled/default", present=False)
    tls = _tls(settings)
    # nginx -t reads the whole configuration: the site is checked in place.
    engines = upstreams(plan)
    gated = acceptance.pending(plan, engines, PRIVATE_DIR, CONF_PATH)
    site_text = site_config(settings, gateway_clients, engines, secrets.backend_key(), tls, pending=tuple(gated))
    site = install_checked("nginx site nas-ai", site_text, CONF_PATH, "nginx -t -q", mode="0600")
    main = install_checked("nginx worker shutdown timeout", render(
        "gateway/nas-ai-main.conf.j2", shutdown_timeout_s=settings.gateway_read_timeout_s + 60),
        MAIN_CONF_PATH, "nginx -t -q", mode="0644")
    running("nginx running and enabled", "nginx.service",
            reloaded=keys.will_change or default_site.will_change or site.will_change or main.will_change)
    if gated:
        acceptance.gate(plan, gated, CONF_PATH, PRIVATE_DIR, secrets.backend_key())


def remove(plan: Plan) -> None:
    """A host that left the gateway role: its site, keys and TLS files go, so no key answers there;
    nginx stops unless it serves other sites of the host (a NAS's own web UI may run on it). The
    keys go last: they mark the role as left only once the rest is done."""
    left_role("Remove the gateway from a host that left the gateway role", KEYS_FILE, [
        f"rm -f {CONF_PATH} {MAIN_CONF_PATH}",
        ("if find /etc/nginx/sites-enabled /etc/nginx/conf.d -mindepth 1 -maxdepth 1 2>/dev/null | grep -q .; then "
         "if systemctl is-active -q nginx; then systemctl reload nginx; fi; "
         "else systemctl disable --now nginx; fi"),
        f"rm -rf {PRIVATE_DIR}",
    ])
