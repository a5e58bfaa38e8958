"""Monitoring: node_exporter on every host, the nginx exporter and mtail (the gateway's answers by
status and client, from its access log) on every gateway, Prometheus and
Alertmanager (Debian's packages) on the monitoring hosts, with targets generated from the
inventory and alert rules checked by promtool before every reload."""

from pyinfra.operations import apt

from tasks import firewall, topology
from tasks.gateway import ACCESS_LOG, STUB_STATUS_ADDRESS
from tasks.plan import Plan
from tasks.settings import DeployError
from tasks.rendering import (
    SYSTEMD_DIR,
    install_checked,
    left_role,
    put_text,
    put_unit_file,
    render,
    running,
    stop_and_disable,
)

RULES_FILE = "/etc/prometheus/nas-ai.rules.yml"
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
ALERTMANAGER_CONFIG = "/etc/prometheus/alertmanager.yml"
MTAIL_PROGRAM = "/etc/mtail/nas-ai-gateway.mtail"
# Neither has authentication: both listen on loopback alone, for Grafana beside them and for an
# operator's SSH tunnel. Alertmanager runs alone, without its cluster port.
PROMETHEUS_ADDRESS = f"127.0.0.1:{firewall.PROMETHEUS_PORT}"
ALERTMANAGER_ADDRESS = f"127.0.0.1:{firewall.ALERTMANAGER_PORT}"
TSDB_DIR = "/var/lib/prometheus/metrics2"  # the Debian package's --storage.tsdb.path
# Prometheus deletes its oldest block only once the cap is passed, and its write-ahead log comes on
# top: its documentation advises a cap of at most 80-85 % of the disk it has.
RETENTION_DISK_SHARE = 0.8
_SIZE_UNITS = {unit: 1 << (10 * power) for power, unit in enumerate("BKMGTPE")}
# The units node_exporter reports on: the stack's and the ones it stands on.
WATCHED_UNITS = r"(nas-ai-engine|nas-ai-firewall|nginx|prometheus|prometheus-alertmanager|ssh)\.service"


# Debian's nginx exporter exits when nginx does not answer at its start (at boot it may start
# first; after a reload the new workers may not listen yet): start it after nginx, retry forever.
NGINX_EXPORTER_DROP_IN = """# Managed by the nas-ai deploy (tasks/monitoring.py).
[Unit]
After=nginx.service
StartLimitIntervalSec=0

[Service]
Restart=always
RestartSec=5
"""


def retention_bytes(size: str) -> int | None:
    """A Prometheus size (settings.PROMETHEUS_SIZE: 2GB, 512MiB; powers of 1024 either way) in
    bytes; None for 0, no cap."""
    if size == "0":
        return None
    number = size.rstrip("B").rstrip("i")
    unit = number[-1] if number[-1] in _SIZE_UNITS else "B"
    return int(float(number.rstrip("KMGTPE")) * _SIZE_UNITS[unit])


def check(settings, room_bytes: int) -> None:
    """Prometheus's size cap must be reached before its disk is full: `room_bytes` is what it has
    (the free space of its disk plus what its samples take now)."""
    cap = retention_bytes(settings.monitoring_retention_size)
    limit = int(room_bytes * RETENTION_DISK_SHARE)
    if cap is not None and cap > limit:
        raise DeployError(
            f"monitoring_retention_size {settings.monitoring_retention_size} would fill the disk before "
            f"Prometheus reaches it: {room_bytes >> 20} MiB are free for it at {TSDB_DIR} (with what it holds "
            f"now), and it may pass its cap by a block before deleting one. Set monitoring_retention_size "
            f"to at most {limit >> 20}MiB, or free space on that disk")


def _flags(name: str, package: str, args: str):
    """Debian's units of these daemons read their flags as ARGS from /etc/default/<package>."""
    return put_text(f"{name} flags", f'# Managed by the nas-ai deploy (tasks/monitoring.py).\nARGS="{args}"\n',
                    f"/etc/default/{package}", "0644")


def _firewall_drop_in(name: str, unit: str):
    """The exporter's own IP filter: Prometheus and loopback alone, whatever happens to the table."""
    allowed = sorted({address for monitor in topology.monitoring_hosts()
                      for address in firewall.addresses_of(topology.lan_address(monitor))})
    return put_unit_file(f"{name} IP filter", render("monitoring/exporter-firewall.conf.j2", allowed=allowed),
                         f"{SYSTEMD_DIR}/{unit}.d/nas-ai-firewall.conf")


def _service_args(name: str, package: str, unit: str, args: str, drop_in: str | None = None):
    """An exporter with its flags: restarted when they change."""
    apt.packages(name=f"Install {name}", packages=[package], no_recommends=True, cache_time=24 * 3600)
    flags = _flags(name, package, args)
    unit_files = [_firewall_drop_in(name, unit)]
    if drop_in is not None:
        unit_files.append(put_unit_file(f"{name} unit drop-in", drop_in, f"{SYSTEMD_DIR}/{unit}.d/nas-ai.conf"))
    running(f"{name} running and enabled", unit, unit_files=unit_files, restarted=flags.will_change)


def exporters(plan: Plan) -> None:
    _service_args("node_exporter", "prometheus-node-exporter", "prometheus-node-exporter.service",
                  "--collector.systemd --collector.systemd.enable-restarts-metrics "
                  f"--collector.systemd.unit-include={WATCHED_UNITS}")
    if plan.gateway:
        _service_args("nginx exporter", "prometheus-nginx-exporter", "prometheus-nginx-exporter.service",
                      f"-nginx.scrape-uri=http://{STUB_STATUS_ADDRESS}/stub_status "
                      f"-web.listen-address=:{firewall.NGINX_EXPORTER_PORT}", NGINX_EXPORTER_DROP_IN)
        _gateway_log_exporter()
    else:
        left_role("Stop the gateway's exporters on a host that left the gateway role", MTAIL_PROGRAM, [
            stop_and_disable("mtail", "prometheus-nginx-exporter"),
            f"rm -rf {SYSTEMD_DIR}/prometheus-nginx-exporter.service.d {SYSTEMD_DIR}/mtail.service.d",
            "systemctl daemon-reload",
            f"rm -f {MTAIL_PROGRAM}",
        ])


def _gateway_log_exporter() -> None:
    """nginx's stub_status has no status codes: mtail counts them from the JSON access log (its
    Debian package puts the mtail user in the adm group, which reads /var/log/nginx)."""
    apt.packages(name="Install mtail", packages=["mtail"], no_recommends=True, cache_time=24 * 3600)
    program = install_checked("mtail program", render("monitoring/nas-ai-gateway.mtail"), MTAIL_PROGRAM,
                              "mtail --compile_only --logtostderr --progs /etc/mtail")
    flags = put_text("mtail flags", "# Managed by the nas-ai deploy (tasks/monitoring.py).\n"
                     f"LOGS={ACCESS_LOG}\nHOST=0.0.0.0\nPORT={firewall.GATEWAY_LOG_EXPORTER_PORT}\n"
                     'EXTRA_ARGS="--emit_prog_label=false"\n', "/etc/default/mtail", "0644")
    running("mtail running and enabled", "mtail.service", unit_files=[_firewall_drop_in("mtail", "mtail.service")],
            restarted=flags.will_change, reloaded=program.will_change)


def _target(plan: Plan, target, port: int, via_engine_address: bool = False) -> dict:
    if target.name == plan.host:
        address = plan.bind_address if via_engine_address else "127.0.0.1"
    elif via_engine_address:
        address = topology.address_from(target, plan.host)
    else:
        address = topology.lan_address(target)
    return {"address": topology.host_port(address, port), "node": target.name}


def scrape_jobs(plan: Plan) -> dict[str, list[dict]]:
    engine_port = plan.settings.engine_port
    everyone = {h.name: h for h in topology.inference_hosts() + topology.gateway_hosts()
                + topology.monitoring_hosts()}.values()
    return {
        "node": [_target(plan, h, firewall.NODE_EXPORTER_PORT) for h in everyone],
        "nginx": [_target(plan, h, firewall.NGINX_EXPORTER_PORT) for h in topology.gateway_hosts()],
        "gateway": [_target(plan, h, firewall.GATEWAY_LOG_EXPORTER_PORT) for h in topology.gateway_hosts()],
        "engine": [_target(plan, h, engine_port, via_engine_address=True) for h in topology.inference_hosts()],
    }


def server(plan: Plan) -> None:
    settings = plan.settings
    apt.packages(name="Install Prometheus and Alertmanager",
                 packages=["prometheus", "prometheus-alertmanager"], no_recommends=True,
                 cache_time=24 * 3600)
    # Sized for a NAS disk: whichever cap is reached first.
    flags = _flags("Prometheus", "prometheus", f"--web.listen-address={PROMETHEUS_ADDRESS} "
                   f"--storage.tsdb.retention.time={settings.monitoring_retention_time} "
                   f"--storage.tsdb.retention.size={settings.monitoring_retention_size}")
    alerting_flags = _flags("Alertmanager", "prometheus-alertmanager",
                            f"--web.listen-address={ALERTMANAGER_ADDRESS} --cluster.listen-address=")
    alert_rules = install_checked(
        "Alert rules", render("monitoring/nas-ai.rules.yml.j2", ttft_p99_slo_s=settings.monitoring_ttft_p99_slo_s),
        RULES_FILE, "promtool check rules {path}")
    # Checked after the rules it names are live: promtool reads them from their final path.
    config = install_checked(
        "Prometheus config", render("monitoring/prometheus.yml.j2", scrape_interval=settings.monitoring_scrape_interval,
                                    rules_file=RULES_FILE, jobs=scrape_jobs(plan), prometheus_address=PROMETHEUS_ADDRESS,
                                    alertmanager_address=ALERTMANAGER_ADDRESS),
        PROMETHEUS_CONFIG, "promtool check config {path}")
    alerting = install_checked(
        "Alertmanager config", render("monitoring/alertmanager.yml.j2", webhook=settings.monitoring_alert_webhook),
        ALERTMANAGER_CONFIG, "amtool check-config {path}")
    running("Prometheus running and enabled", "prometheus.service", restarted=flags.will_change,
            reloaded=alert_rules.will_change or config.will_change)
    running("Alertmanager running and enabled", "prometheus-alertmanager.service", restarted=alerting_flags.will_change,
            reloaded=alerting.will_change)


def remove_server(plan: Plan) -> None:
    """A host that left the monitoring role: Prometheus and Alertmanager stop, their configs (the
    targets, the webhook) go. Samples already kept stay in /var/lib/prometheus."""
    left_role("Remove Prometheus and Alertmanager from a host that left the monitoring role", RULES_FILE, [
        stop_and_disable("prometheus", "prometheus-alertmanager"),
        f"rm -f {RULES_FILE} {PROMETHEUS_CONFIG} {ALERTMANAGER_CONFIG}",
    ])
