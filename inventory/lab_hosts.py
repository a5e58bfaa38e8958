"""Lab hosts as pyinfra inventory entries, read from the state that `lab up` writes."""

import json

from lab import config


def lab_hosts(backend: str, **data) -> list:
    if not config.STATE_FILE.exists():
        raise SystemExit(f"the lab is not up ({config.STATE_FILE} missing): run `python -m lab up`")
    state = json.loads(config.STATE_FILE.read_text())
    hosts = sorted((h for h in state["hosts"].values() if h["backend"] == backend),
                   key=lambda h: h["address"])
    if not hosts:
        raise SystemExit(f"the lab has no {backend} hosts: run `python -m lab up --backend {backend}`")
    return [(h["name"], {
        "ssh_hostname": h["address"],
        "ssh_user": config.DEPLOY_USER,
        "ssh_key": str(config.SSH_KEY),
        "ssh_known_hosts_file": str(config.KNOWN_HOSTS),
        "ssh_strict_host_key_checking": "accept-new",
        "_sudo": True,
        **data,
    }) for h in hosts]
