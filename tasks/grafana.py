"""Grafana on the monitoring hosts: from Grafana's APT repository (its signing key checked against
the fingerprint pinned here) or from a .deb the operator supplies for offline hosts; the
Prometheus datasource and the stack's dashboard (tasks/dashboard.py) provisioned from files."""

from pathlib import Path

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server

from tasks import dashboard, monitoring, secrets
from tasks.plan import Plan
from tasks.rendering import SYSTEMD_DIR, left_role, put_text, put_unit_file, render, running, stop_and_disable
from tasks.settings import DeployError

# Grafana Labs' APT signing key (https://apt.grafana.com, rotated 2023). A key served with another
# fingerprint is refused: a rotation is for a person to check, then to change here.
KEY_FINGERPRINT = "B53AE77BADB630A683046005963FA27710458545"
KEY_URL = "https://apt.grafana.com/gpg.key"
REPOSITORY = "https://apt.grafana.com stable main"
KEYRING = "/etc/apt/keyrings/grafana.asc"
OPERATOR_DEB = "/var/cache/nas-ai/grafana.deb"
PROVISIONING = "/etc/grafana/provisioning"
DASHBOARDS_DIR = "/etc/grafana/dashboards/nas-ai"
ENVIRONMENT_FILE = "/etc/grafana/nas-ai.env"
PROMETHEUS_URL = f"http://{monitoring.PROMETHEUS_ADDRESS}"  # Grafana runs beside Prometheus on each monitoring host


def source(settings) -> str | None:
    """'apt', a .deb on the controller, or None; refused before any change when it is neither."""
    chosen = settings.monitoring_grafana
    if chosen in (None, "apt"):
        return chosen
    if not chosen.endswith(".deb") or not Path(chosen).is_file():
        raise DeployError(f"monitoring_grafana = {chosen!r}: give 'apt', None, or the path of a grafana "
                          ".deb file on this controller (https://grafana.com/grafana/download)")
    return chosen


def check(settings) -> None:
    """Preflight: the chosen source exists."""
    source(settings)


def key_check_script(url: str = KEY_URL, fingerprint: str = KEY_FINGERPRINT, keyring: str = KEYRING) -> str:
    """Fetch the key; install it only if it holds one primary key, with the pinned fingerprint."""
    return f"""set -e
fetched=$(mktemp)
trap 'rm -f "$fetched"' EXIT
curl -fsSL --max-time 60 -o "$fetched" {url}
primary=$(gpg --show-keys --with-colons "$fetched" | awk -F: '$1 == "pub" {{want = 1; next}} want && $1 == "fpr" {{print $10; want = 0}}' | tr '\\n' ' ')
if [ "$primary" != "{fingerprint} " ]; then
    echo "the key at {url} has fingerprint(s) [$primary], not the pinned {fingerprint}: refused. Check Grafana's announcements, then update KEY_FINGERPRINT in tasks/grafana.py" >&2
    exit 1
fi
install -D -m 0644 "$fetched" {keyring}"""


def _install_from_apt() -> None:
    apt.packages(name="Install curl and gpg (Grafana's signing key)", packages=["curl", "gpg", "ca-certificates"],
                 no_recommends=True, cache_time=24 * 3600)
    if not host.get_fact(File, path=KEYRING):
        server.shell(name="Grafana's APT key, checked against its pinned fingerprint", commands=[key_check_script()])
    repository = apt.repo(name="Grafana's APT repository", src=f"deb [signed-by={KEYRING}] {REPOSITORY}",
                          filename="grafana")
    apt.update(name="Read Grafana's APT repository", _if=repository.did_change)
    apt.packages(name="Install Grafana", packages=["grafana"], no_recommends=True)


def _install_from_deb(path: str) -> None:
    files.directory(name="Directory for operator packages", path=str(Path(OPERATOR_DEB).parent), mode="0755")
    files.put(name="Grafana .deb from the controller", src=path, dest=OPERATOR_DEB, mode="0644")
    apt.deb(name="Install Grafana from the operator's .deb", src=OPERATOR_DEB)


def datasource() -> str:
    return render("grafana/datasource.yaml.j2", uid=dashboard.DATASOURCE.uid, url=PROMETHEUS_URL)


def dashboards_provider() -> str:
    return render("grafana/dashboards.yaml.j2", path=DASHBOARDS_DIR)


def environment(settings) -> str:
    return render("grafana/nas-ai.env.j2", port=settings.monitoring_grafana_port,
                  admin_password=secrets.grafana_admin_password())


def install(plan: Plan) -> None:
    settings = plan.settings
    chosen = source(settings)
    if chosen is None:  # turned off: one installed before goes
        remove(plan)
        return
    if chosen == "apt":
        _install_from_apt()
    else:
        _install_from_deb(chosen)
    provisioned = [
        put_text("Grafana datasource (Prometheus)", datasource(), f"{PROVISIONING}/datasources/nas-ai.yaml", "0640",
                 group="grafana"),
        put_text("Grafana dashboard provider", dashboards_provider(), f"{PROVISIONING}/dashboards/nas-ai.yaml",
                 "0640", group="grafana"),
        put_text("Grafana settings (0640)", environment(settings), ENVIRONMENT_FILE, "0640", group="grafana"),
    ]
    drop_in = put_unit_file("Grafana unit drop-in", render("grafana/grafana-server.conf.j2",
                                                           environment_file=ENVIRONMENT_FILE),
                            f"{SYSTEMD_DIR}/grafana-server.service.d/nas-ai.conf")
    files.directory(name=f"Directory {DASHBOARDS_DIR}", path=DASHBOARDS_DIR, mode="0755")
    # Grafana rereads provisioned dashboards by itself: a new dashboard needs no restart.
    put_text("Grafana dashboard nas-ai", dashboard.to_json(), f"{DASHBOARDS_DIR}/nas-ai.json", "0644")
    running("Grafana running and enabled", "grafana-server.service", unit_files=[drop_in],
            restarted=any(op.will_change for op in provisioned))


def remove(plan: Plan) -> None:
    """A host that left the monitoring role: Grafana stops; its settings (the admin password), the
    provisioning and the dashboard go."""
    left_role("Remove Grafana from a host that left the monitoring role", ENVIRONMENT_FILE, [
        stop_and_disable("grafana-server"),
        (f"rm -rf {ENVIRONMENT_FILE} {PROVISIONING}/datasources/nas-ai.yaml {PROVISIONING}/dashboards/nas-ai.yaml "
         f"{DASHBOARDS_DIR} {SYSTEMD_DIR}/grafana-server.service.d/nas-ai.conf"),
        "systemctl daemon-reload",
    ])
