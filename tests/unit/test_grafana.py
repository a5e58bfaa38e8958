"""Grafana's install choices, its pinned-key check (run for real with gpg against keys made here)
and its provisioning files."""

import os
import shutil
import subprocess

import pytest
import yaml

from tasks import dashboard, grafana
from tasks.settings import DeployError, resolve


def _settings(**data):
    return resolve("nas1", data)


def test_apt_is_the_default_and_none_turns_grafana_off():
    assert grafana.source(_settings()) == "apt"
    assert grafana.source(_settings(monitoring_grafana=None)) is None


def test_an_operator_deb_must_exist_on_the_controller(tmp_path):
    package = tmp_path / "grafana_12.0.0_amd64.deb"
    with pytest.raises(DeployError, match="path of a grafana .deb file on this controller"):
        grafana.source(_settings(monitoring_grafana=str(package)))
    package.write_bytes(b"!<arch>\n")
    assert grafana.source(_settings(monitoring_grafana=str(package))) == str(package)
    with pytest.raises(DeployError, match="monitoring_grafana = 'yum'"):
        grafana.source(_settings(monitoring_grafana="yum"))


def _make_key(home, name: str) -> tuple[str, str]:
    """(armored public key file, fingerprint) of a fresh key in a throwaway keyring."""
    environment = dict(os.environ, GNUPGHOME=str(home))
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", name, "ed25519", "sign", "1d"],
                   env=environment, check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--with-colons", "--list-keys", name], env=environment, check=True,
                             capture_output=True, text=True).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    exported = home / "key.asc"
    exported.write_bytes(subprocess.run(["gpg", "--armor", "--export", name], env=environment, check=True,
                                        capture_output=True).stdout)
    return str(exported), fingerprint


@pytest.mark.skipif(not (shutil.which("gpg") and shutil.which("curl")), reason="gpg and curl are needed")
def test_the_key_is_installed_only_with_the_pinned_fingerprint(tmp_path):
    key, fingerprint = _make_key(tmp_path / "signer", "Signer <signer@example.invalid>")
    other_key, _ = _make_key(tmp_path / "impostor", "Impostor <impostor@example.invalid>")
    keyring = tmp_path / "keyrings" / "grafana.asc"
    environment = dict(os.environ, GNUPGHOME=str(tmp_path / "checker"))
    (tmp_path / "checker").mkdir(mode=0o700)

    def check(url):
        return subprocess.run(["sh", "-c", grafana.key_check_script(url, fingerprint, str(keyring))],
                              env=environment, capture_output=True, text=True)

    refused = check(f"file://{other_key}")
    assert refused.returncode == 1 and "refused" in refused.stderr and not keyring.exists()
    both = tmp_path / "both.asc"
    both.write_text(open(key).read() + open(other_key).read())
    assert check(f"file://{both}").returncode == 1 and not keyring.exists()  # an extra key rides along
    accepted = check(f"file://{key}")
    assert accepted.returncode == 0, accepted.stderr
    assert keyring.read_text() == open(key).read()


def test_provisioning_points_the_dashboard_at_the_local_prometheus():
    (source,) = yaml.safe_load(grafana.datasource())["datasources"]
    assert source["uid"] == dashboard.DATASOURCE.uid and source["url"] == grafana.PROMETHEUS_URL
    assert source["type"] == "prometheus" and source["isDefault"] is True
    (provider,) = yaml.safe_load(grafana.dashboards_provider())["providers"]
    assert provider["options"]["path"] == grafana.DASHBOARDS_DIR and provider["allowUiUpdates"] is False


def test_settings_keep_grafana_private(monkeypatch, tmp_path):
    monkeypatch.setattr(grafana.secrets, "GRAFANA_PASSWORD_FILE", tmp_path / "grafana-admin-password")
    lines = dict(line.split("=", 1) for line in grafana.environment(_settings(monitoring_grafana_port=3300))
                 .splitlines() if line and not line.startswith("#"))
    assert (lines["GF_SERVER_HTTP_ADDR"], lines["GF_SERVER_HTTP_PORT"]) == ("127.0.0.1", "3300")
    assert lines["GF_ANALYTICS_REPORTING_ENABLED"] == "false" and lines["GF_ANALYTICS_CHECK_FOR_UPDATES"] == "false"
    assert len(lines["GF_SECURITY_ADMIN_PASSWORD"]) >= 24
    assert (tmp_path / "grafana-admin-password").stat().st_mode & 0o077 == 0
