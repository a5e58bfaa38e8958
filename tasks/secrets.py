"""Secrets kept on the controller, never in the repository: the clients' API keys when the data
gives none, the backend key that the gateways send and the engines demand, and Grafana's admin
password."""

import json
import os
import secrets as token_source
from pathlib import Path

from tasks import atomic

SECRETS_DIR = Path(os.environ.get("NAS_AI_SECRETS_DIR", Path.home() / ".config" / "nas-ai"))
API_KEYS_FILE = SECRETS_DIR / "api-keys.json"
BACKEND_KEY_FILE = SECRETS_DIR / "backend-key"
GRAFANA_PASSWORD_FILE = SECRETS_DIR / "grafana-admin-password"


def _private_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic.write_text(path, text, mode=0o600)


def api_keys(from_data: dict | None) -> dict[str, str]:
    """{client name: key}: the data's keys, or one generated key kept in API_KEYS_FILE."""
    if from_data:
        return dict(from_data)
    if not API_KEYS_FILE.exists():
        _private_write(API_KEYS_FILE, json.dumps({"default": "sk-nas-" + token_source.token_urlsafe(24)}))
    return json.loads(API_KEYS_FILE.read_text())


def _generated(path: Path, nbytes: int) -> str:
    if not path.exists():
        _private_write(path, token_source.token_urlsafe(nbytes) + "\n")
    return path.read_text().strip()


def backend_key() -> str:
    return _generated(BACKEND_KEY_FILE, 32)


def grafana_admin_password() -> str:
    return _generated(GRAFANA_PASSWORD_FILE, 18)
