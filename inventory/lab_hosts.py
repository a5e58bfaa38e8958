"""Lab hosts as pyinfra inventory entries, read from the state that `lab up` writes."""

import json
import secrets

from lab import config
from tasks import atomic


def lab_hosts(backend: str, scenario: str = "default", **data) -> list:
    if not config.STATE_FILE.exists():
        raise SystemExit(f"the lab is not up ({config.STATE_FILE} missing): run `python -m lab up`")
    state = json.loads(config.STATE_FILE.read_text())
    hosts = sorted((h for h in state["hosts"].values()
                    if h["backend"] == backend and h.get("scenario", "default") == scenario),
                   key=lambda h: h["address"])
    if not hosts:
        option = "" if scenario == "default" else f" --scenario {scenario}"
        raise SystemExit(f"the lab has no {backend} hosts{option and ' of' + option}: "
                         f"run `python -m lab up --backend {backend}{option}`")
    return [(h["name"], {
        "ssh_hostname": h["address"],
        "ssh_user": config.DEPLOY_USER,
        "ssh_key": str(config.SSH_KEY),
        "ssh_known_hosts_file": str(config.KNOWN_HOSTS),
        "ssh_strict_host_key_checking": "accept-new",
        "_sudo": True,
        **data,
    }) for h in hosts]


def lab_api_keys(clients: dict[str, dict]) -> dict[str, dict]:
    """gateway_api_keys for lab clients, {name: {limits}}: each key generated once and kept, 0600,
    beside the lab's state (never in the repository)."""
    path = config.HOME / "api-keys.json"
    keys = json.loads(path.read_text()) if path.exists() else {}
    if set(clients) - set(keys):
        keys.update({name: "sk-lab-" + secrets.token_urlsafe(24) for name in set(clients) - set(keys)})
        atomic.write_text(path, json.dumps(keys), mode=0o600)
    return {name: {"key": keys[name], **limits} for name, limits in clients.items()}
